"""Example Python guests, run with `kernel = "python:pvguest.examples.NAME"` in an xl config."""
