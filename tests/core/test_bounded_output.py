"""The publish queue: stream text joined into few messages, none above the bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nbdist_provisioner.mux.core.output.bounded import PublishQueue, split_text


@given(st.lists(st.text(alphabet="ab\n", max_size=300), max_size=60),
       st.integers(min_value=8, max_value=200))
def test_joined_text_is_whole_in_order_and_bounded(texts, limit):
    queue = PublishQueue(limit)
    for text in texts:
        queue.add({"msg_id": "c"}, "c", "stream", {"name": "stdout", "text": text})
    sent = queue.take()
    assert "".join(p.content["text"] for p in sent) == "".join(texts)
    assert all(len(p.content["text"]) <= limit for p in sent)


def test_a_burst_of_small_writes_becomes_few_messages():
    queue = PublishQueue()
    for i in range(4096):
        queue.add({"msg_id": "c"}, "c", "stream", {"name": "stdout", "text": f"line {i}\n"})
    (message,) = queue.take()
    assert message.content["text"].count("\n") == 4096


def test_streams_of_other_cells_or_names_and_other_messages_are_not_joined():
    queue = PublishQueue()
    queue.add({"msg_id": "a"}, "a", "stream", {"name": "stdout", "text": "1\n"})
    queue.add({"msg_id": "a"}, "a", "stream", {"name": "stderr", "text": "2\n"})
    queue.add({"msg_id": "b"}, "b", "stream", {"name": "stderr", "text": "3\n"})
    queue.add({"msg_id": "b"}, "b", "display_data", {"data": {}}, {"m": 1}, (b"x",))
    queue.add({"msg_id": "b"}, "b", "stream", {"name": "stderr", "text": "4\n"})
    sent = queue.take()
    assert [(p.msg_type, p.content.get("text")) for p in sent] == [
        ("stream", "1\n"), ("stream", "2\n"), ("stream", "3\n"), ("display_data", None),
        ("stream", "4\n")]
    assert sent[3].metadata == {"m": 1} and sent[3].buffers == (b"x",)


def test_split_text_cuts_after_a_newline_where_it_can():
    assert split_text("aaaa\nbbbb\ncc", 6) == ["aaaa\n", "bbbb\n", "cc"]
    assert split_text("x" * 10, 4) == ["xxxx", "xxxx", "xx"]
