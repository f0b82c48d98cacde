"""The whole service under faults and load, the deploy files, and the docs' examples run as written."""
