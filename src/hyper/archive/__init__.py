"""Tar archives that come out of a guest, made safe on the host.

`guest_tar` filters the tar a guest sends for `docker cp` / `hyper cp`
(hyperd serves only what passes it, and the hyper CLI runs it again);
`extract` is the hyper CLI's extractor, which writes nothing outside its
destination and undoes a failed copy.
"""
