"""Recipes that build guest images from Debian's own packages."""
