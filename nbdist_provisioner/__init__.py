"""nbdist-provisioner: one Jupyter kernel that is really N IPython kernels, one per rank."""

__version__ = "0.1.0"
