#!/usr/bin/env python3
"""Write a Maildir for each user: gendata.py MAILROOT USERS MSGS SIZE [PREFIX]
Messages go to new/ named like a delivery with ,S= and ,W= (both servers read
sizes from the name). Lines are 78 octets + LF; one line in ten starts with '.'."""
import os, sys
root, users, msgs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prefix = sys.argv[5] if len(sys.argv) > 5 else "u"
def body(n, size):
    head = "From: bench@example.org\nTo: user@example.org\nSubject: message %d\nMessage-Id: <%d@bench>\n\n" % (n, n)
    out = [head]; total = len(head); i = 0
    line = ("abcdefghi " * 8)[:77]
    while total < size:
        l = ("." if i % 10 == 0 else "x") + line + "\n"
        out.append(l); total += len(l); i += 1
    return "".join(out).encode()
cache = {}
for u in range(users):
    d = os.path.join(root, "%s%d" % (prefix, u))
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for m in range(msgs):
        b = cache.get(m % 7)
        if b is None:
            b = cache[m % 7] = body(m % 7, size)
        wire = len(b) + b.count(b"\n")
        name = "%d.M%06dP1Q%d.bench,S=%d,W=%d" % (1700000000 + m, m % 1000000, m, len(b), wire)
        with open(os.path.join(d, "new", name), "wb") as f:
            f.write(b)
