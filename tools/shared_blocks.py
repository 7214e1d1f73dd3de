"""Keeps the blocks that the standalone scripts share identical, and their markers sound.

A shared block is the text between a line `#=== shared: NAME` and the line
`#=== end shared: NAME`. Every block has one reference script (REFERENCE, airbench94.py
unless listed otherwise) and every script carries exactly the blocks listed for it in CARRIED,
each the same text as the reference's copy.

    python tools/shared_blocks.py check    # names every problem below (exit 1 if any)
    python tools/shared_blocks.py sync     # copies each reference block into the scripts that carry it
    python tools/shared_blocks.py sizes    # lines of each script's header, Setup, method and harness

`check` reports: malformed or unbalanced markers; a block its reference script lacks; a listed
block that a script lacks or whose text differs from the reference; a block a script carries
but is not listed for; a script of the project (airbench*.py, ablations/*.py, legacy/*.py) that
is not listed at all; a harness banner missing, or anything but the harness block below it (the
method goes above); a top-level function or class defined twice in one script (the later one
silently wins); a global name a function uses that the script never defines or imports; and a
forward reference: a top-level function or class (main() aside) that uses a top-level name the
script defines only below it, so the script does not read top to bottom.
tests/test_shared_blocks.py runs the check.

What is a block: the Setup every script starts with (errors, the device and its formats), the
per-epoch table, the timer and the FLOPs counter, every piece of the method that scripts share word
for word (the loader, BatchNorm, Conv, Mul, whitening, lookahead, TTA, step count, lr schedule,
optimizer), and the whole harness. What stays per script: the pieces in which the methods differ (hyp, check_hyp,
ConvGroup, make_net, train, flops_per_run), even where a few scripts happen to agree today; a
block around them would add marker lines to the diff of every pair that disagrees, and the diffs
are what a reader reads. Where such copies must agree, the tests compare them (main7_mirror.py
and main8_compile.py are airbench94.py and airbench94_compiled.py text for text; consecutive
rungs differ only in their feature).
"""
import ast
import builtins
import difflib
import os
import re
import symtable
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT_GLOBS = ('airbench*.py', 'ablations/*.py', 'legacy/*.py')

HARNESS = ('harness',)
METHOD = ('loader', 'batchnorm', 'conv', 'mul', 'whitening', 'lookahead', 'tta', 'steps', 'schedule', 'optimizer')
# every script: airbench94's Setup above its method, the per-epoch table, the timer and the FLOPs counter
# inside it, its harness below
ALWAYS = ('setup', 'logging', 'timer', 'flops') + HARNESS
REFERENCE = {name: 'airbench94.py' for name in ALWAYS + METHOD}
REFERENCE['reinit'] = 'airbench94_compiled.py'  # only the scripts that keep one net per invocation
ALL = tuple(REFERENCE)

SGD_FAMILY = METHOD
CARRIED = {
    'airbench94.py': SGD_FAMILY,
    'airbench94_compiled.py': SGD_FAMILY + ('reinit',),
    'airbench95.py': SGD_FAMILY,
    'airbench96.py': SGD_FAMILY,
    'airbench96_paper.py': SGD_FAMILY,
    # Muon: no lookahead, its own lr schedules and optimizers
    'airbench94_muon.py': tuple(b for b in SGD_FAMILY if b not in ('lookahead', 'schedule', 'optimizer')) + ('reinit',),
    'airbench96_faster.py': SGD_FAMILY + ('reinit',),
    # the speedrun: its own loader (with brightness/contrast jitter), SVD whitening, Muon, lr schedules,
    # optimizers and selective TTA
    'airbench94_speedrun.py': ('batchnorm', 'conv', 'mul', 'steps', 'reinit'),
}
# the ablation ladder (issue 10): one entry per rung
_NO_FEATURES = tuple(b for b in SGD_FAMILY if b not in ('conv', 'whitening', 'lookahead'))  # main0's blocks
CARRIED.update({
    'ablations/train_resnet18.py': ('loader', 'tta', 'steps', 'schedule'),  # no Mul
    'ablations/main0_network.py': _NO_FEATURES,                              # its own default-init Conv
    'ablations/main1_whiten.py': _NO_FEATURES + ('whitening',),              # its own default-init Conv
    'ablations/main2_dirac.py': _NO_FEATURES + ('whitening', 'conv'),
    'ablations/main3_scalebias.py': _NO_FEATURES + ('whitening', 'conv'),
    'ablations/main4_freeze.py': _NO_FEATURES + ('whitening', 'conv'),
    'ablations/main5_lookahead.py': SGD_FAMILY,
    'ablations/main6_tta.py': SGD_FAMILY,
    'ablations/main7_mirror.py': SGD_FAMILY,
    'ablations/main8_compile.py': SGD_FAMILY + ('reinit',),
})
# the prior records (issue 11)
CARRIED.update({
    # its own ghost BatchNorm, 3x3 whitening, EMA (not lookahead), lr schedule and SGD
    'legacy/cifar10_fast.py': ('loader', 'mul', 'tta', 'steps'),
    # its own loader (its crop quirk, CutMix), conv init, chunked whitening, lr schedule and SGD
    'legacy/hlb_cifar10.py': ('batchnorm', 'mul', 'lookahead', 'tta', 'steps'),
})

MARKER = re.compile(r'^#=== (end shared|shared): ([\w-]+)$')

# Every script: the method above this banner; below it only the harness block, and then the
# script's own main() and entry point.
HARNESS_BANNER = """\
#############################################
#      Harness: the same in every script    #
#############################################
"""


class MarkerError(ValueError):
    pass


def parse(text, where='<text>'):
    """{name: block text} of every shared block in text; MarkerError if the markers are malformed."""
    blocks, name, start = {}, None, None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        stripped = line.rstrip('\n')
        if not stripped.lstrip().startswith('#==='):
            continue
        m = MARKER.match(stripped)
        if not m:
            raise MarkerError(f'{where}:{i + 1}: malformed marker {stripped!r}: '
                              'write "#=== shared: NAME" or "#=== end shared: NAME" at the start of the line')
        kind, label = m.groups()
        if kind == 'shared':
            if name is not None:
                raise MarkerError(f'{where}:{i + 1}: block {label!r} opens inside block {name!r}')
            if label in blocks:
                raise MarkerError(f'{where}:{i + 1}: block {label!r} appears twice')
            name, start = label, i + 1
        else:
            if label != name:
                raise MarkerError(f'{where}:{i + 1}: "end shared: {label}" closes '
                                  + (f'{name!r}' if name else 'no open block'))
            blocks[name], name = ''.join(lines[start:i]), None
    if name is not None:
        raise MarkerError(f'{where}: block {name!r} is never closed')
    return blocks


def defined_twice(text, where='<text>'):
    """Messages for every top-level function or class name that text defines more than once."""
    seen, problems = {}, []
    for node in ast.parse(text, where).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in seen:
                problems.append(f'{where}:{node.lineno}: {node.name!r} is defined twice (first at line '
                                f'{seen[node.name]}); the later definition silently replaces the earlier')
            seen.setdefault(node.name, node.lineno)
    return problems


def harness_layout(text, where='<text>'):
    """Messages unless text has the harness banner once, followed by exactly the HARNESS blocks in
    order (blank lines between them), and after them no shared block and no section banner."""
    if text.count(HARNESS_BANNER) != 1:
        return [f'{where}: the harness banner must appear exactly once, verbatim (tools/shared_blocks.py HARNESS_BANNER)']
    below = text.split(HARNESS_BANNER)[1]
    pattern = ''.join(rf'\s*#=== shared: {re.escape(n)}\n.*?^#=== end shared: {re.escape(n)}\n' for n in HARNESS)
    m = re.match(pattern, below, re.S | re.M)
    if not m:
        return [f'{where}: below the harness banner must come the block {", ".join(HARNESS)}, and nothing before it']
    rest = below[m.end():]
    if '#=== ' in rest or '#' * 45 in rest:
        return [f'{where}: after the harness blocks only main() and the entry point may follow']
    return []


def undefined_names(text, where='<text>'):
    """Messages for every global name a function of text reads that the module never defines
    (a shared block copied into a script that lacks one of its imports fails only when run)."""
    top = symtable.symtable(text, where, 'exec')
    defined = set(top.get_identifiers()) | set(dir(builtins)) | {'__file__', '__doc__', '__name__', '__spec__'}
    problems, scopes = [], list(top.get_children())
    while scopes:
        scope = scopes.pop()
        scopes += scope.get_children()
        for sym in scope.get_symbols():
            if sym.is_global() and sym.is_referenced() and sym.get_name() not in defined:
                problems.append(f"{where}: {scope.get_name()}() uses {sym.get_name()!r}, which the script never "
                                'defines or imports')
    return sorted(set(problems))


def forward_references(text, where='<text>'):
    """Messages for every top-level function or class (main() aside) that uses a top-level name the
    module binds only further down: read top to bottom, the reader meets a name before its meaning."""
    tree = ast.parse(text, where)
    first = {}  # top-level name -> line of its first binding
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else \
            [a.asname or a.name.split('.')[0] for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) \
            else [t.id for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)]
        for name in names:
            first.setdefault(name, node.lineno)
    lines = {(n.name, n.lineno) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    problems = []
    for scope in symtable.symtable(text, where, 'exec').get_children():
        if (scope.get_name(), scope.get_lineno()) not in lines or scope.get_name() == 'main':
            continue
        todo, used = [scope], set()
        while todo:
            inner = todo.pop()
            todo += inner.get_children()
            used |= {s.get_name() for s in inner.get_symbols() if s.is_global() and s.is_referenced()}
        for name in sorted(used):
            if first.get(name, 0) > scope.get_lineno():
                problems.append(f'{where}:{scope.get_lineno()}: {scope.get_name()} uses {name!r}, which is defined '
                                f'only below it (line {first[name]}): define it before its first use')
    return problems


def reference_block(references, name):
    """The text of block name in its reference script, None if the reference lacks it."""
    return parse(references[name], REFERENCE[name]).get(name)


def drift(script_text, references, carried, script='<script>'):
    """[(block, message)] for every listed block that is missing or differs from its reference, and
    every block the script carries but is not listed for. references: {block: reference text}."""
    own = parse(script_text, script)
    problems = []
    carried = tuple(ALWAYS) + tuple(b for b in carried if b not in ALWAYS)
    for name in carried:
        ref = reference_block(references, name)
        if ref is None:
            problems.append((name, f'{REFERENCE[name]}, the reference of the shared block {name!r}, lacks it: '
                                   'restore its markers there'))
            continue
        if name not in own:
            problems.append((name, f'{script} lacks the shared block {name!r}'))
            continue
        if own[name] != ref:
            diff = ''.join(list(difflib.unified_diff(ref.splitlines(True), own[name].splitlines(True),
                                                     f'{REFERENCE[name]} [{name}]', f'{script} [{name}]', n=1))[:40])
            problems.append((name, f'{script}: shared block {name!r} differs from {REFERENCE[name]}:\n{diff}'))
    for name in sorted(set(own) - set(carried)):
        known = 'is not listed for it in tools/shared_blocks.py CARRIED' if name in REFERENCE else \
            'that no reference script defines (tools/shared_blocks.py REFERENCE)'
        problems.append((name, f'{script} carries a shared block {name!r} {known}'))
    return problems


def replace_blocks(script_text, references, carried):
    """script_text with each carried block replaced by its reference's text."""
    for name in carried:
        ref = reference_block(references, name)
        if ref is None:
            raise MarkerError(f'{REFERENCE[name]}, the reference of the shared block {name!r}, lacks it')
        pattern = re.compile(rf'(^#=== shared: {re.escape(name)}\n).*?(^#=== end shared: {re.escape(name)}$)',
                             re.S | re.M)
        script_text, n = pattern.subn(lambda m: m.group(1) + ref + m.group(2), script_text)
        if n != 1:
            raise MarkerError(f'cannot find block {name!r} to replace')
    return script_text


def sizes(text):
    """{part: lines} of a script: its header docstring, the Setup (banner and block), the method (the
    rest above the harness banner) and the harness (from its banner to the end of the file)."""
    lines = text.splitlines()
    header = ast.parse(text).body[0].end_lineno
    setup_start = next(i for i, line in enumerate(lines) if line == '#                   Setup                   #') - 1
    setup_end = lines.index('#=== end shared: setup') + 1
    harness = next(i for i, line in enumerate(lines) if line == '#      Harness: the same in every script    #') - 1
    return {'header': header, 'setup': setup_end - setup_start,
            'method': harness - header - (setup_end - setup_start), 'harness': len(lines) - harness}


def write_atomically(path, text):
    """text into path by a temp file beside it and a rename: a failed write (a full disk) leaves the
    script as it was, never truncated."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def project_scripts(repo=REPO):
    """Every standalone script of the project, relative to the repository root."""
    return sorted({str(p.relative_to(repo)) for pattern in SCRIPT_GLOBS for p in repo.glob(pattern)})


def problems(repo=REPO, carried=CARRIED):
    """Every problem `check` reports, as messages."""
    out = []
    for script in project_scripts(repo):
        if script not in carried:
            out.append(f'{script} is not listed in tools/shared_blocks.py CARRIED: list the shared blocks it carries')
    references = {}
    for name, script in REFERENCE.items():
        path = repo / script
        references[name] = path.read_text() if path.exists() else ''
    for script, blocks in carried.items():
        path = repo / script
        if not path.exists():
            out.append(f'{script} is listed in tools/shared_blocks.py CARRIED but does not exist')
            continue
        text = path.read_text()
        try:
            out += [message for _, message in drift(text, references, blocks, script)]
        except MarkerError as e:
            out.append(str(e))
        out += harness_layout(text, script)
        out += undefined_names(text, script)
        out += defined_twice(text, script)
        out += forward_references(text, script)
    return list(dict.fromkeys(out))  # a reference that lost its block is reported once, not per script


def main(argv):
    """The command; its messages are printed once the work is done, so a closed pipe (| head) stops nothing."""
    if argv not in (['check'], ['sync'], ['sizes']):
        sys.exit(__doc__)
    out = []
    if argv == ['sizes']:
        out.append(f"{'script':<30} {'header':>6} {'setup':>6} {'method':>6} {'harness':>7}")
        for script in project_scripts():
            n = sizes((REPO / script).read_text())
            out.append(f"{script:<30} {n['header']:>6} {n['setup']:>6} {n['method']:>6} {n['harness']:>7}")
    if argv == ['sync']:
        references = {name: (REPO / script).read_text() for name, script in REFERENCE.items()}
        for script, blocks in CARRIED.items():
            path = REPO / script
            if not path.exists():
                continue
            text = path.read_text()
            try:
                new = replace_blocks(text, references, [b for b in ALWAYS + tuple(blocks) if REFERENCE[b] != script])
            except MarkerError as e:
                out.append(f'{script} not updated: {e}')
                continue
            if new != text:
                write_atomically(path, new)
                out.append(f'updated {script}')
    found = [] if argv == ['sizes'] else problems()
    try:
        if out or found:
            print('\n'.join(out + found))
    except BrokenPipeError:
        sys.stdout = None  # the reader went away; there is nothing left to do
    sys.exit(1 if found else 0)


if __name__ == '__main__':
    main(sys.argv[1:])
