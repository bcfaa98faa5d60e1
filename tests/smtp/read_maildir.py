"""Prints every message of a Maildir as JSON: envelope recipient, headers, and
the decoded text/plain and text/html parts (HTML entities resolved)."""

import email
import email.policy
import html
import json
import mailbox
import sys

out = []
for _, msg in sorted(mailbox.Maildir(sys.argv[1], factory=None).items()):
    m = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    plain = m.get_body(("plain",))
    rich = m.get_body(("html",))
    out.append({
        "rcpt_to": m["X-RcptTo"],
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
