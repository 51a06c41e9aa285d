"""The timeline: `--trace FILE.json` as a Chrome trace-event file that Perfetto and chrome://tracing open.

- `session.TraceSession`: while a run is traced, the hypervisor's records
  (pvhyp.trace) and dom0's (dom0.timeline) are appended to one spool
  (abi.trace_spool), with a sampler adding the counters nobody emits
  (pending events).
- `chrome.convert`: the spool, sorted by time in bounded memory, to the
  trace-event JSON: a process per domain, a thread per vCPU (guest runs,
  hypercalls decoded by name with their errno, traps, upcalls), dom0's
  backends as threads of dom0, flows for ring kicks, counter tracks.
- `check.validate`: the format's rules as Perfetto's JSON importer applies
  them (our offline check where trace_processor_shell is absent).
- `render.render_svg`: a picture of a trace made by pvhyp itself.
"""
