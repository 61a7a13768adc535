"""The ``instahide`` command line (see ``instahide --help``)."""
