"""Keeps the shared blocks of the standalone scripts identical to airbench94.py's.

A shared block is the text between a line `#=== shared: NAME` and the line
`#=== end shared: NAME`. airbench94.py holds the reference copy of every block; each other
script carries the blocks listed for it in CARRIED, verbatim.

    python tools/shared_blocks.py check    # names every script and block that drifted (exit 1)
    python tools/shared_blocks.py sync     # copies airbench94.py's blocks into the other scripts

tests/test_shared_blocks.py runs the check.
"""
import difflib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = 'airbench94.py'
ALL = ('errors', 'device', 'data-files', 'loader', 'whitening', 'lookahead', 'tta', 'logging', 'cli', 'driver')
CARRIED = {
    'airbench94_compiled.py': ALL,
    'airbench95.py': ALL,
    'airbench96.py': ALL,
    'airbench94_muon.py': tuple(b for b in ALL if b != 'lookahead'),  # Muon runs without lookahead
    'airbench96_faster.py': ALL,
}
MARKER = re.compile(r'^#=== (end shared|shared): ([\w-]+)$')


class MarkerError(ValueError):
    pass


def parse(text, where='<text>'):
    """{name: block text} of every shared block in text; MarkerError if the markers are malformed."""
    blocks, name, start = {}, None, None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = MARKER.match(line.rstrip('\n'))
        if not m:
            continue
        kind, label = m.groups()
        if kind == 'shared':
            if name is not None:
                raise MarkerError(f'{where}:{i + 1}: block {label!r} opens inside block {name!r}')
            if label in blocks:
                raise MarkerError(f'{where}:{i + 1}: block {label!r} appears twice')
            name, start = label, i + 1
        else:
            if label != name:
                raise MarkerError(f'{where}:{i + 1}: "end shared: {label}" closes {name!r}')
            blocks[name], name = ''.join(lines[start:i]), None
    if name is not None:
        raise MarkerError(f'{where}: block {name!r} is never closed')
    return blocks


def drift(script_text, reference_text, carried, script='<script>'):
    """[(block, message)] for every carried block that is missing or differs from the reference."""
    ref, own = parse(reference_text, REFERENCE), parse(script_text, script)
    problems = []
    for name in carried:
        if name not in own:
            problems.append((name, f'{script} lacks the shared block {name!r}'))
        elif own[name] != ref[name]:
            diff = ''.join(list(difflib.unified_diff(ref[name].splitlines(True), own[name].splitlines(True),
                                                     f'{REFERENCE} [{name}]', f'{script} [{name}]', n=1))[:40])
            problems.append((name, f'{script}: shared block {name!r} differs from {REFERENCE}:\n{diff}'))
    for name in sorted(set(own) - set(ref)):
        problems.append((name, f'{script} has a shared block {name!r} that {REFERENCE} does not define'))
    return problems


def replace_blocks(script_text, reference_text, carried):
    """script_text with each carried block replaced by the reference's text."""
    ref = parse(reference_text, REFERENCE)
    for name in carried:
        pattern = re.compile(rf'(^#=== shared: {re.escape(name)}\n).*?(^#=== end shared: {re.escape(name)}$)',
                             re.S | re.M)
        script_text, n = pattern.subn(lambda m: m.group(1) + ref[name] + m.group(2), script_text)
        if n != 1:
            raise MarkerError(f'cannot find block {name!r} to replace')
    return script_text


def main(argv):
    if argv not in (['check'], ['sync']):
        sys.exit(__doc__)
    reference = (REPO / REFERENCE).read_text()
    bad = 0
    for script, carried in CARRIED.items():
        path = REPO / script
        if not path.exists():
            continue
        text = path.read_text()
        if argv == ['sync']:
            new = replace_blocks(text, reference, carried)
            if new != text:
                path.write_text(new)
                print(f'updated {script}')
        for _, message in drift(path.read_text(), reference, carried, script):
            print(message)
            bad += 1
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main(sys.argv[1:])
