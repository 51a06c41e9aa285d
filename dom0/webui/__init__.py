"""The web console: static pages (the browser app, vendored xterm.js), the WebSocket engine
and the bridge from a WebSocket to a guest's console pty. Served by dom0's XenAPI server."""
