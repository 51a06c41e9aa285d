"""The three-server showcase (`pvhyp demo servers`, `pvhyp bench servers`): batagor serves files
over SMB, mieayam prints over IPP, ketoprak serves HTTP, all three copy-on-write clones of one
Debian template (dom0/images/servers.py), reached from the host through passt port forwards.

- ``scenario``: the three servers (examples/servers/*.cfg), their clones and boot configs.
- ``probes``: "does it answer?" for each protocol, in a few bytes of that protocol.
- ``clients``: the checks with the real clients (smbclient, lp/lpstat, curl) and a load loop.
"""
