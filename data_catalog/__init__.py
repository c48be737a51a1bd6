"""wxens data_catalog package."""
