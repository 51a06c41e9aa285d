"""Guest disk and boot images, built on the host from distribution packages.

Host-side build tooling, not part of the running dom0: `debian` turns Debian's
kernel and busybox packages into a kernel, an initramfs and a System.map
(`pvhyp image debian`); the disk images of the next guests are built here too.
"""
