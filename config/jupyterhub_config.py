# JupyterHub example: give each user's server multi-rank kernels sized by the spawner.
#
# The provisioner reads NBDIST_* environment variables as its defaults, so a
# spawner only has to set the environment of the single-user server.

c = get_config()  # noqa: F821 - provided by JupyterHub's config loader

c.Spawner.environment = {
    "NBDIST_NPROC": "4",               # ranks per multi-rank kernel
    "NBDIST_BACKEND": "auto",          # nccl when each rank has a GPU, else gloo
    "NBDIST_COLLECTIVE_TIMEOUT": "600",
}
# The single-user image needs the kernelspec once, without --nproc so the rank
# count comes from NBDIST_NPROC above:
#     pip install nbdist-provisioner && nbdist install --sys-prefix --name multi-rank
