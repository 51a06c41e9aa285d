"""The console backend (xenconsoled's job): guest console rings <-> ptys and log files."""
