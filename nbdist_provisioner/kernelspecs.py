"""MultiRankKernelSpecManager: kernel picker names that state the real rank count.

A multi-rank kernelspec installed without ``--nproc`` gets its rank count when the
kernel starts: ``c.MultiRankProvisioner.nproc`` > ``NBDIST_NPROC`` (what a JupyterHub
spawner sets) > the default. Its kernel.json cannot know that number, so it says
"Python 3 (multi-rank)" and carries a template in ``metadata.nbdist``. This manager,
enabled in the server's config with

    c.ServerApp.kernel_spec_manager_class = (
        "nbdist_provisioner.kernelspecs.MultiRankKernelSpecManager")

fills the template from the very settings the provisioner will resolve, so the
launcher and the notebook toolbar show "Python 3 (multi-rank, 4 ranks)" and it is true.
Kernelspecs with a fixed ``nproc`` and all other kernelspecs are served unchanged.
"""

from __future__ import annotations

from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from traitlets import TraitError

#: kernel.json ``metadata.nbdist`` key holding a display name with a ``{nproc}`` field
TEMPLATE_KEY = "display_name_template"
SIZED_DISPLAY_NAME = "Python 3 (multi-rank, {nproc} ranks)"
#: what clients without this manager show for a kernelspec without a fixed count
UNSIZED_DISPLAY_NAME = "Python 3 (multi-rank)"
PROVISIONER_NAME = "nbdist-provisioner"


class MultiRankKernelSpecManager(KernelSpecManager):  # type: ignore[misc]
    """A KernelSpecManager that names unsized multi-rank kernelspecs with their rank count."""

    def get_kernel_spec(self, kernel_name: str, *args: Any, **kwargs: Any) -> KernelSpec:
        spec = super().get_kernel_spec(kernel_name, *args, **kwargs)
        template = sized_template(spec.metadata)
        if template is None:
            return spec
        try:
            nproc = self.resolved_nproc(spec.metadata)
            spec.display_name = template.format(nproc=nproc)
        except (ValueError, KeyError, IndexError, TraitError) as err:
            # A bad NBDIST_NPROC or template: keep the static name; the kernel start
            # itself fails with the message naming the setting.
            self.log.warning("nbdist: cannot name kernelspec %s with its rank count: %s",
                             kernel_name, err)
        return spec

    def resolved_nproc(self, metadata: dict[str, Any]) -> int:
        """The rank count a start of this kernelspec would get, resolved by the provisioner."""
        from .provisioner import MultiRankProvisioner

        config = dict(metadata["kernel_provisioner"].get("config") or {})
        # Same construction as jupyter_client's provisioner factory: kernel.json config as
        # keyword arguments, Jupyter config through the parent chain.
        return int(MultiRankProvisioner(parent=self, kernel_id="", **config).nproc)


def sized_template(metadata: dict[str, Any]) -> str | None:
    """The display-name template of an nbdist kernelspec whose count is not fixed, else None."""
    provisioner = metadata.get("kernel_provisioner") or {}
    if provisioner.get("provisioner_name") != PROVISIONER_NAME:
        return None
    if "nproc" in (provisioner.get("config") or {}):
        return None
    template = (metadata.get("nbdist") or {}).get(TEMPLATE_KEY)
    return template if isinstance(template, str) else None
