"""Prints every message of a Maildir, or of a directory of .eml files, as JSON:
envelope recipient (the To header for .eml files, which carry no envelope),
headers, and the decoded text/plain and text/html parts (HTML entities
resolved)."""

import email
import email.policy
import html
import json
import mailbox
import os
import sys


def raw_messages(path):
    if os.path.isdir(os.path.join(path, "cur")):
        return [msg.as_bytes() for _, msg in sorted(mailbox.Maildir(path, factory=None).items())]
    names = sorted(n for n in os.listdir(path) if n.endswith(".eml"))
    out = []
    for n in names:
        with open(os.path.join(path, n), "rb") as f:
            out.append(f.read())
    return out


out = []
for raw in raw_messages(sys.argv[1]):
    m = email.message_from_bytes(raw, policy=email.policy.default)
    plain = m.get_body(("plain",))
    rich = m.get_body(("html",))
    out.append({
        "rcpt_to": m["X-RcptTo"] or m["To"],
        "to": m["To"],
        "from": m["From"],
        "subject": m["Subject"],
        "message_id": m["Message-ID"],
        "date": m["Date"],
        "content_type": m.get_content_type(),
        "parts": [p.get_content_type() for p in m.iter_parts()] if m.is_multipart() else [],
        "text": plain.get_content() if plain is not None else None,
        "html": html.unescape(rich.get_content()) if rich is not None else None,
    })
print(json.dumps(out))
