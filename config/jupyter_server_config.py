# A working jupyter_server configuration for nbdist-provisioner.
#
#   jupyter server --config=config/jupyter_server_config.py
#
# Every kernelspec that names the provisioner (nbdist install ...) picks up these
# defaults; kernel.json metadata.kernel_provisioner.config still wins over them.

c = get_config()  # noqa: F821 - provided by Jupyter's config loader

# The multi-rank kernelspecs name their provisioner in kernel.json, so there is no
# need for c.KernelProvisionerFactory.default_provisioner_name = "nbdist-provisioner"
# (that would also turn plain kernelspecs such as python3 into multiplexer starts).

# Kernelspecs installed without --nproc show the rank count they will start with
# ("Python 3 (multi-rank, 4 ranks)" with nproc below); others are shown unchanged.
# (It replaces the server's KernelSpecManager: skip it if you use another custom one,
# e.g. nb_conda_kernels; such kernelspecs then show "Python 3 (multi-rank)".)
c.ServerApp.kernel_spec_manager_class = (
    "nbdist_provisioner.kernelspecs.MultiRankKernelSpecManager")

# Ranks per multi-rank kernel, and how they start.
c.MultiRankProvisioner.nproc = 4
c.MultiRankProvisioner.launcher = "local"
# "auto": nccl when every rank has its own GPU, else gloo.
c.MultiRankProvisioner.backend = "auto"
c.MultiRankProvisioner.init_process_group = True
# A collective that waits longer than this fails instead of hanging forever.
c.MultiRankProvisioner.collective_timeout = 300.0
# Label every output line; fields {rank}, {local_rank}, {host}, {world_size}.
c.MultiRankProvisioner.stream_prefix = "[rank {rank}] "
# Extra environment for every rank.
c.MultiRankProvisioner.env = {"PYTHONUNBUFFERED": "1"}
