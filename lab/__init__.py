"""
The lab: everything that guards disks, processes and users around the core (which never imports it). Locks and
whole-folder replacement (folders.py), one-line errors and exit codes (errors.py), every input check and its
message (checks.py), and the command-line entry points that put them in front of the core (launch.py).
"""
