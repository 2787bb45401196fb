"""Engines behind one signature: ``local`` (a process pool on this machine) and ``ray`` (Ray Data actors)."""
