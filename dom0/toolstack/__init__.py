"""The toolstack: xl.cfg parsing, domain lifecycle, the xenstore entries libxl writes, the CLI API."""
