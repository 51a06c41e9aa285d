"""The PV MMU: frame table, page types, validation of guest page tables."""
