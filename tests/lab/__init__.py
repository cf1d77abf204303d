"""The crimux test lab: real registry, CNI network, containerd and crimuxd.

images -- build OCI images without docker and push them to a registry
env    -- start and tear down the lab's processes (Registry, CNINetwork,
          Containerd, Crimuxd, and Lab which assembles the usual set)
cri    -- a CRI v1 client generated from cri/api.proto, plus config helpers
"""
