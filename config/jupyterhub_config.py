# nbdist-provisioner for JupyterHub: multi-rank kernels in every user's server, sized
# by the spawner. It sets nothing else: your authenticator, spawner class, addresses
# and proxy stay as your own jupyterhub_config.py has them (see README, "JupyterHub").
#
# Use it from your jupyterhub_config.py, *after* your own c.Spawner settings:
#     load_subconfig("/etc/jupyterhub/nbdist_jupyterhub_config.py")   # this file, copied
# or paste the lines below at the end of your file. Set your own spawner environment on
# c.Spawner (not on a subclass such as c.KubeSpawner), so that both merge.
#
# The users' servers need the kernelspec once, installed without --nproc in the
# environment they run in, so the rank count comes from NBDIST_NPROC below:
#     pip install nbdist-provisioner && nbdist install --sys-prefix

c = get_config()  # noqa: F821 - provided by JupyterHub's config loader

# The provisioner reads NBDIST_* from the single-user server's environment as its
# defaults (a kernelspec's own kernel.json settings still win). Added to, not replacing,
# the environment your config gives the spawner.
c.Spawner.environment.update({
    "NBDIST_NPROC": "4",               # ranks per multi-rank kernel
    "NBDIST_BACKEND": "auto",          # nccl when each rank has a GPU, else gloo
    "NBDIST_COLLECTIVE_TIMEOUT": "600",
})

# The kernel picker names the kernel with the count the kernel will really start with,
# "Python 3 (multi-rank, 4 ranks)" (without it: "Python 3 (multi-rank)").
c.Spawner.args.append(
    "--ServerApp.kernel_spec_manager_class="
    "nbdist_provisioner.kernelspecs.MultiRankKernelSpecManager")
