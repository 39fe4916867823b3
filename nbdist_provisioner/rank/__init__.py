"""What runs inside each rank: a real IPython kernel plus the distributed set-up."""
