"""Tamiyo: the policies that drive the seed lifecycle through the composed action space."""
