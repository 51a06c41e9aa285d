"""dom0's network: netback (io/netif.h), learning bridges, and passt as the way out without root.

- ``netif``: the sans-IO ring engine of one vif (TX reassembly, RX filling,
  hostile-entry rules), copying through a grant-copy port.
- ``grant_copy``: that port over the hypercall channel (GNTTABOP_copy
  batches through a staging area of dom0's own pages).
- ``checksum``: filling the TCP/UDP checksum of a NETTXF_csum_blank frame.
- ``bridge``: the learning L2 switch (sans-IO ``Switch`` + ``Bridge`` that
  delivers to ports).
- ``uplink``: the guard that keeps guests from reaching anything but the
  connections the host opened through a port forward, and the passt
  process on a Unix socket.
- ``vif``: the vif's xenstore keys, MAC generation and ``forward=`` specs.
"""
