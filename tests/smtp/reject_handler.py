"""SMTP sink for the end-to-end tests: an aiosmtpd Maildir mailbox that refuses,
with 550, every recipient listed in a file (one address a line). The file is
read at each RCPT, so a test can refuse an address and later accept it."""

from aiosmtpd.handlers import Mailbox


class RejectingMailbox(Mailbox):
    def __init__(self, mail_dir, reject_file):
        super().__init__(mail_dir)
        self.reject_file = reject_file

    def rejected(self):
        try:
            with open(self.reject_file) as f:
                return {line.strip().lower() for line in f if line.strip()}
        except FileNotFoundError:
            return set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.rejected():
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 2:
            parser.error("RejectingMailbox takes MAILDIR and REJECT_FILE")
        return cls(args[0], args[1])
