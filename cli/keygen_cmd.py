"""`walrewind keygen` — make an encryption key (or show the ids of existing ones)."""

from __future__ import annotations

import os

import click

from .common import emit_json, friendly


@click.command("keygen", short_help="Make a new encryption key (base64 of 32 random bytes).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the key to this new file (mode 0600; an existing file is never overwritten) "
                   "instead of printing it.")
@click.option("--id-of", "id_of", type=click.Path(dir_okay=False), metavar="FILE",
              help="Print the key id of every key in FILE (safe to share), not a new key.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
@friendly
def keygen_command(output, id_of, as_json):
    """Print a new encryption key: base64 of 32 random bytes, for --encryption-key-file,
    encryption_key_file in the config, or WALREWIND_ENCRYPTION_KEY.

    Keep it apart from the replica (a replica and its key together are plaintext): without the key
    nothing in an encrypted replica can be restored.  Its key id (a fingerprint, stored in every
    encrypted object and named in messages) is printed on stderr.  See docs/SECURITY.md."""
    from ..engine.storage.keys import generate_key, parse_key, read_key_file

    if id_of is not None:
        ids = [k.key_id for k in read_key_file(id_of)]
        if as_json:
            emit_json({"file": id_of, "key_id": ids[0], "key_ids": ids})
        else:
            click.echo("\n".join(ids))
        return
    key = generate_key()
    key_id = parse_key(key, "new key").key_id
    if output is None:
        if as_json:
            emit_json({"key": key, "key_id": key_id})
        else:
            click.echo(key)
            click.echo(f"key id {key_id}", err=True)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    if as_json:
        emit_json({"file": output, "key_id": key_id})
    else:
        click.echo(f"wrote a new key (key id {key_id}) to {output}")
