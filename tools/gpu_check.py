"""One check of the whole family on the machine it runs on (a lent GPU): every top-level script, and with
--originals the published script each one reproduces, a warmup and N timed runs each, under a time budget
per script, in one table (text and JSON) rewritten after every script.

    python tools/gpu_check.py --data-dir DIR                           # every script, 10 runs each
    python tools/gpu_check.py --data-dir DIR --originals ORIG          # ... each beside its original
    python tools/gpu_check.py --data-dir DIR --originals ORIG --scripts airbench94,airbench94_muon \\
        --device cuda --budget-s 90 --budget-s airbench94_muon=240 --total-s 540 --tar /tmp/gpu-check.tgz
    python tools/gpu_check.py --data-dir DIR --device cpu --runs 1 --set opt.train_epochs=1   # on a CPU

DIR is read as the scripts read --data-dir (the cache train.pt/test.pt, cifar-10-batches-py/ or
cifar-10-python.tar.gz; the tool downloads nothing). ORIG holds clones of KellerJordan/cifar10-airbench
and hiverge/cifar10-speedrun as cifar10-airbench/ and cifar10-speedrun/ (docs/gpu.md says how to make
it). Order, by value: airbench94, airbench94_muon, airbench94_speedrun, airbench94_compiled,
airbench95, airbench96, airbench96_faster, each followed by its original; --scripts picks a subset.

Each script runs as `python SCRIPT.py --data-dir DIR --runs N --seed S --device DEV --log-dir OUT/logs
[--no-warmup] [--set K=V ...]`, its figures read from its own log.json. Each original runs, with the
same python, as a copy in a temp folder whose ./cifar10 holds train.pt/test.pt in torchvision's form,
written from the data the scripts read (airbench94.load_cifar10); two documented text substitutions
are applied to that copy only (ORIGINALS below): its run loop's count becomes N, and in the four
originals whose warmup is missing or commented out a warmup run is turned on (--no-warmup leaves them
as published; the speedrun's untimed empty_cache, sync and GPU sleep before each run stay). Its figures
are parsed from the per-epoch table it prints (per run: tta_val_acc and the cumulative time of its
`eval` row, 4 decimals). The originals hard-code CUDA: on another device they are skipped, with one
line saying so.

A script past its budget (--budget-s SECONDS for all, --budget-s NAME=SECONDS for one script and its
original; --total-s for the whole check) gets SIGTERM, its process group SIGKILL --grace-s later; it
is recorded as 'timed out' with the runs it finished, and the check goes on. Every process compiles
into a fresh torch.compile cache of its own (--shared-compile-cache: the default cache), so each
compile time is a cold one and no script reuses another's autotuning.

Timing: time per run is the mean of the runs' own timed seconds (CUDA events on a GPU, as the paper
times them). Warmup seconds (the untimed warmup run, compilation included): the log's warmup_seconds
where it has one (source 'log'); else the seconds from the table's header line to the warmup's eval
row as the lines arrived (source 'lines'); else the process's wall time less the runs' seconds and
the data loading before its 'log:' line (source 'wall').

OUT (--out, default logs/gpu-check-<date>-<time>/) gets table.txt and table.json (rewritten after
every script; the JSON also holds each command, the ratios project/original and the originals'
commits), logs/ (the scripts' log folders), originals/<script>/ (the copy that ran and its logs),
and output/ (each process's stdout and stderr); --tar FILE writes FILE, a tar.gz of OUT, after every
script, so one file brings everything back. Exit status: 0 every script completed (or was skipped
as described), 1 one timed out, failed, diverged or was not run, 2 bad input (one sentence), 130
interrupted, 143 terminated (SIGTERM): the table keeps every script finished before.
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORDER = ['airbench94', 'airbench94_muon', 'airbench94_speedrun', 'airbench94_compiled', 'airbench95',
         'airbench96', 'airbench96_faster']
COLUMNS = ('script', 'variant', 'device', 'torch', 'runs', 'TTA %', 'std', 's/run', 'warmup s', 'status',
           'log')
RUN_LOOP = re.compile(r'for run in range\((\d+)\)')  # the originals' loop over their timed runs
LEGACY_WARMUP = [("    #main('warmup')\n", "    main('warmup')\n")]  # the original's own call, commented out
# (repository folder under ORIG, file, substitutions that turn its warmup on), as fetched: cifar10-airbench
# at f1c599c4af24aca803e3e65a6a7e52a502e09d0e, cifar10-speedrun at 5cd49b1e586f473b535cdeee69fe8ad5b6e9618b
ORIGINALS = {
    'airbench94': ('cifar10-airbench', 'legacy/airbench94.py', LEGACY_WARMUP),
    'airbench94_muon': ('cifar10-airbench', 'airbench94_muon.py', []),
    'airbench94_speedrun': ('cifar10-speedrun', 'cifar10_speedrun.py', []),
    'airbench94_compiled': ('cifar10-airbench', 'legacy/airbench94_compiled.py', []),
    'airbench95': ('cifar10-airbench', 'legacy/airbench95.py', LEGACY_WARMUP),
    'airbench96': ('cifar10-airbench', 'legacy/airbench96.py', LEGACY_WARMUP),
    # no warmup at all: its first run would pay the compilation of three max-autotune nets
    'airbench96_faster': ('cifar10-airbench', 'airbench96_faster.py', [(
        "    print_columns(logging_columns_list, is_head=True)\n",
        "    print_columns(logging_columns_list, is_head=True)\n"
        "    main('warmup', hyp, model_proxy, model_trainbias, model_freezebias)\n")]),
}


class CheckError(Exception):
    """Bad input: one sentence, exit status 2."""


def say(text):
    """print(), except that once stdout is closed (`| head`) the rest goes to /dev/null: the check goes on."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def atomic_write(path, write):
    """write(tmp), then tmp renamed over path: never a half-written file."""
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


# ---------------------------------------------------------------- the printed per-epoch table


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def split_lines(text, at=None):
    """Printed text as [(arrival, line)]: '\\r' ends a line too (the speedrun ends its progress line so)."""
    return [(at, line) for line in text.replace('\r\n', '\n').replace('\r', '\n').split('\n')]


def parse_table(lines):
    """The per-epoch table in printed lines [(arrival, text)], the project's and every original's: from
    the header row (cells naming epoch and tta_val_acc) on, a row's 'run' cell starts a run and its
    'eval' row ends it. Returns (the header's arrival or None, [{'run', 'tta_val_acc', 'val_acc',
    'time_seconds', 'at'}]), the warmup as run 'warmup'; time_seconds is the cumulative timed seconds
    of the eval row (the legacy originals call the column total_time_seconds)."""
    names, header_at, current, runs = None, None, None, []
    for at, text in lines:
        text = text.strip()
        if not text.startswith('|'):
            continue
        cells = [c.strip() for c in text.strip('|').split('|')]
        if names is None:
            if 'epoch' in cells and 'tta_val_acc' in cells:
                names, header_at = cells, at
            continue
        if len(cells) != len(names):
            continue
        row = dict(zip(names, cells))
        if row.get('run'):
            current = int(row['run']) if row['run'].isdigit() else row['run']
        seconds = number(row.get('time_seconds', row.get('total_time_seconds')))
        if row.get('epoch') == 'eval' and number(row.get('tta_val_acc')) is not None and seconds is not None:
            runs.append({'run': current, 'tta_val_acc': number(row['tta_val_acc']),
                         'val_acc': number(row.get('val_acc')), 'time_seconds': seconds, 'at': at})
            current = None
    return header_at, runs


def mean_std(values):
    """(mean, sample std), as the scripts log them (std None below 2 values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m)**2 for v in values) / (len(values) - 1)) if len(values) > 1 else None


# ---------------------------------------------------------------- one process under a budget


def kill_group(proc, grace_s):
    """SIGTERM to the process's group (the scripts then log what finished), SIGKILL grace_s later."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # also what the process left behind
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_process(command, budget_s, grace_s, out_path, err_path, cwd=None, env=None):
    """Runs command in a new session (its own process group) for budget_s seconds at most, saving its
    stdout and stderr; returns {'returncode', 'timed_out', 'wall_seconds', 'lines' [(arrival, text)],
    'stderr'}, arrivals in seconds since the start. Ctrl-C or SIGTERM stops the group, then goes up."""
    lines, err = [], []

    def read(stream, path, keep):
        with open(path, 'wb') as f:
            for raw in iter(stream.readline, b''):
                f.write(raw)
                f.flush()
                keep(time.monotonic() - start, raw.decode(errors='replace'))

    start = time.monotonic()
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise CheckError(f'cannot start {command[0]} ({e.strerror or e})') from None
    readers = [threading.Thread(target=read, daemon=True, args=args) for args in (
        (proc.stdout, out_path, lambda at, text: lines.extend(split_lines(text.rstrip('\n'), at))),
        (proc.stderr, err_path, lambda at, text: err.append(text)))]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    except BaseException:
        kill_group(proc, grace_s)
        raise
    wall = time.monotonic() - start
    kill_group(proc, grace_s)  # returns at once for a process that ended; its leftovers get SIGKILL
    for reader in readers:
        reader.join(timeout=10)
    return {'returncode': proc.returncode, 'timed_out': timed_out, 'wall_seconds': wall, 'lines': lines,
            'stderr': ''.join(err)}


def last_sentence(result):
    """The last non-empty line of stderr (every script ends a failure in one sentence), else of stdout."""
    for text in (result['stderr'], '\n'.join(t for _, t in result['lines'])):
        found = [line.strip() for line in text.splitlines() if line.strip()]
        if found:
            return found[-1][:300]
    return None


# ---------------------------------------------------------------- rows


def warmup_of(log, result, seconds):
    """(warmup seconds, source): the log's warmup_seconds, else from the lines, else from the wall time."""
    if isinstance(log, dict) and isinstance(log.get('warmup_seconds'), (int, float)):
        return float(log['warmup_seconds']), 'log'
    header_at, runs = parse_table(result['lines'])
    ends = [r['at'] for r in runs if r['run'] == 'warmup' and r['at'] is not None]
    if header_at is not None and ends:
        return ends[0] - header_at, 'lines'
    if isinstance(log, dict) and not log.get('warmup', True):
        return None, 'no warmup'
    if result['timed_out'] or not seconds:
        return None, None
    loaded = next((at for at, text in result['lines'] if text.startswith('log: ') and at is not None), 0.0)
    return result['wall_seconds'] - sum(seconds) - loaded, 'wall'


def status_of(result, logged=None):
    """'timed out', else the log's status, else from the exit status."""
    if result['timed_out']:
        return 'timed out'
    if logged:
        return logged
    return 'complete' if result['returncode'] == 0 else f"failed (exit {result['returncode']})"


def read_log(folder):
    """The log.json in folder as a dict ({} if there is none or it is not one)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        log = json.loads((Path(folder) / 'log.json').read_text())
        return log if isinstance(log, dict) else {}
    return {}


def project_row(row, result, log_dir, before):
    """row filled in from the script's own log.json (its folder from the 'log: DIR' line)."""
    folder = next((Path(text[5:].strip()) for _, text in result['lines'] if text.startswith('log: ')), None)
    if folder is None:  # killed before it printed the line: a folder that was not there before, if any
        new = sorted(set(log_dir.glob(f"{row['script']}-*")) - before)
        folder = new[0] if new else None
    log = read_log(folder) if folder else {}
    runs = [r for r in log.get('runs') or [] if isinstance(r, dict) and all(
        isinstance(r.get(k), (int, float)) for k in ('tta_val_acc', 'time_seconds'))]
    env = log['environment'] if isinstance(log.get('environment'), dict) else {}
    summary = log['summary'] if isinstance(log.get('summary'), dict) and runs else {}
    seconds = [r['time_seconds'] for r in runs]
    mean, std = mean_std([r['tta_val_acc'] for r in runs])
    row.update(device=env.get('gpu') or env.get('device'), torch=env.get('torch'), runs=len(runs),
               tta_mean=summary.get('mean', mean), tta_std=summary.get('std', std),
               val_mean=mean_std([r['val_acc'] for r in runs if isinstance(r.get('val_acc'), float)])[0],
               seconds_per_run=sum(seconds) / len(seconds) if seconds else None, log_status=log.get('status'),
               log=str(folder) if folder and folder.is_dir() else None)
    row['warmup_seconds'], row['warmup_source'] = warmup_of(log, result, seconds)
    # exit 0 or 1 (diverged): the log says how it ended; otherwise (2: bad input) the exit status does
    row['status'] = status_of(result, log.get('status') if result['returncode'] in (0, 1) else None)
    return row


def original_row(row, result):
    """row filled in from what the original printed (its accuracies to 4 decimals, as printed)."""
    _, runs = parse_table(result['lines'])
    timed = [r for r in runs if r['run'] != 'warmup']
    seconds = [r['time_seconds'] for r in timed]
    mean, std = mean_std([r['tta_val_acc'] for r in timed])
    row.update(runs=len(timed), tta_mean=mean, tta_std=std,
               val_mean=mean_std([r['val_acc'] for r in timed if r['val_acc'] is not None])[0],
               seconds_per_run=sum(seconds) / len(seconds) if seconds else None,
               printed=[{k: r[k] for k in ('run', 'tta_val_acc', 'val_acc', 'time_seconds')} for r in runs])
    row['warmup_seconds'], row['warmup_source'] = warmup_of(None, result, seconds)
    if row['warmup_source'] == 'wall':  # the originals load their data inside every run: not separable
        row['warmup_seconds'], row['warmup_source'] = None, None
    row['status'] = status_of(result, 'complete' if result['returncode'] == 0 and timed else None)
    return row


def ratios(rows):
    """Per script with both variants measured: time per run project/original, TTA accuracy difference."""
    found = []
    for script in dict.fromkeys(r['script'] for r in rows):
        pair = {r['variant']: r for r in rows if r['script'] == script}
        p, o = pair.get('project'), pair.get('original')
        if p and o and p.get('seconds_per_run') and o.get('seconds_per_run') and p['runs'] and o['runs']:
            found.append({'script': script, 'time_ratio': p['seconds_per_run'] / o['seconds_per_run'],
                          'accuracy_difference_points': 100 * (p['tta_mean'] - o['tta_mean']),
                          'runs': [p['runs'], o['runs']]})
    return found


# ---------------------------------------------------------------- the table


def cells(row):
    """A row of the text table: accuracies in %, warmup seconds with their source."""
    def fmt(value, spec, scale=1.0):
        return '' if value is None else format(scale * value, spec)
    warmup = row.get('warmup_seconds')
    source, status = row.get('warmup_source') or '', row['status']
    if status == 'timed out':
        status += f" at {row['budget_seconds']:g} s"
    warmup = f'{warmup:.1f} ({source})' if warmup is not None else source
    return {'script': row['script'], 'variant': row['variant'], 'device': str(row.get('device') or ''),
            'torch': str(row.get('torch') or ''), 'runs': '' if row.get('runs') is None else str(row['runs']),
            'TTA %': fmt(row.get('tta_mean'), '.2f', 100), 'std': fmt(row.get('tta_std'), '.2f', 100),
            's/run': fmt(row.get('seconds_per_run'), '.3f'), 'warmup s': warmup, 'status': status,
            'log': str(row.get('log') or row.get('output') or '')}


def table_text(doc):
    """table.txt: the table, the ratios, then where the data and the originals came from, and the notes."""
    rows = [cells(r) for r in doc['rows']]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    text = ['  '.join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    text += ['  '.join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    text += ['', 'project / original: time per run, and TTA accuracy project - original']
    text += [f"  {q['script']}: {q['time_ratio']:.3f}x, {q['accuracy_difference_points']:+.2f} points "
             f"({q['runs'][0]} and {q['runs'][1]} runs)" for q in doc['ratios']] or ['  none measured']
    d = doc['data']
    text += ['', f"check {doc['status']}, started {doc['started']}, runs {doc['runs']}, seed {doc['seed']}",
             f"data: {d['dir']} ({d['source']}; {d['origin']}; {d['train']} train / {d['test']} test images)"]
    text += [f"original {repo}: {o['path']} at {o['commit'] or 'an unknown commit'}"
             for repo, o in doc['originals'].items()]
    text += [f"{r['script']}-{r['variant']}: {r['message']}" for r in doc['rows'] if r.get('message')]
    return '\n'.join(text + [f'note: {note}' for note in doc['notes']]) + '\n'


def write_table(out, doc, tar):
    doc['ratios'] = ratios(doc['rows'])
    atomic_write(out / 'table.json', lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + '\n'))
    atomic_write(out / 'table.txt', lambda tmp: Path(tmp).write_text(table_text(doc)))
    if tar:
        def pack(tmp):
            with tarfile.open(tmp, 'w:gz') as f:
                f.add(out, arcname=out.name)
        atomic_write(tar, pack)


# ---------------------------------------------------------------- inputs


def budget(text):
    name, sep, seconds = text.rpartition('=')
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)) or sep and name not in ORDER:
        raise argparse.ArgumentTypeError(f'expected SECONDS or NAME=SECONDS, NAME one of {", ".join(ORDER)}, '
                                         f'SECONDS > 0; got {text!r}')
    return name, value


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not value > 0:
            raise argparse.ArgumentTypeError(f'must be a positive number, got {text!r}')
        return value
    return parse


def chosen_scripts(text):
    names = [n.strip().removesuffix('.py') for n in text.split(',') if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown or not names:
        raise CheckError(f"--scripts {text!r}: {', '.join(unknown) or 'no name'} is not one of the project's "
                         f"scripts ({', '.join(ORDER)})")
    return [n for n in ORDER if n in names]


def check_data_dir(data_dir):
    d = Path(data_dir)
    if not d.is_dir():
        raise CheckError(f'--data-dir {data_dir} is not a folder: give the folder that holds CIFAR-10')
    if not ((d / 'train.pt').is_file() and (d / 'test.pt').is_file() or (d / 'cifar-10-batches-py').is_dir()
            or (d / 'cifar-10-python.tar.gz').is_file()):
        raise CheckError(f'--data-dir {data_dir} holds no CIFAR-10 (train.pt and test.pt, '
                         'cifar-10-batches-py/ or cifar-10-python.tar.gz); this tool downloads nothing')


def original_text(folder, script, runs, warmup):
    """The original's source with its run loop's count set to runs and, if warmup, its warmup turned on;
    each substitution must match exactly once, else the file is not the version this tool knows."""
    repo, path, switch_on = ORIGINALS[script]
    file = Path(folder) / repo / path
    try:
        text = file.read_text()
    except OSError as e:
        raise CheckError(f'--originals {folder}: cannot read {file} ({e.strerror or e}); docs/gpu.md says '
                         'how to prepare the folder') from None
    substitutions = [(RUN_LOOP, f'for run in range({runs})')]
    substitutions += [(re.compile(re.escape(old)), new) for old, new in (switch_on if warmup else [])]
    for pattern, new in substitutions:
        text, count = pattern.subn(lambda match: new, text)
        if count != 1:
            raise CheckError(f'{file} holds {count} matches of {pattern.pattern!r}, not 1: it is not the '
                             'version this tool knows (ORIGINALS in tools/gpu_check.py names the commits)')
    return text


def commit_of(folder):
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(['git', '-c', 'safe.directory=*', '-C', str(folder), 'rev-parse', 'HEAD'],
                              capture_output=True, text=True, timeout=20, check=True).stdout.strip() or None
    return None


def prepare_out(out, tar):
    """OUT made (a new or empty folder) and written to once, and FILE's folder written to once."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckError(f'--out {out} exists and is not an empty folder: give a new one')
    for flag, folder, make in (('--tar', tar and tar.parent, False), ('--out', out, True)):
        if folder is None:
            continue
        try:
            if make:
                (folder / 'output').mkdir(parents=True, exist_ok=True)
            probe = folder / f'.probe-{os.getpid()}'
            probe.write_text('')
            probe.unlink()
        except OSError as e:
            raise CheckError(f'{flag} {tar if flag == "--tar" else out}: cannot write in {folder} '
                             f'({e.strerror or e}); give a writable place') from None
    return out.resolve()


# ---------------------------------------------------------------- torchvision's files for the originals


def prepare_originals_data(data, folder):
    """folder/cifar10/train.pt and test.pt as torchvision's CIFAR10 gives them to the originals ({'images':
    uint8 NHWC, 'labels': int64, 'classes': list of str}), from the splits airbench94.load_cifar10 returned;
    returns folder/cifar10."""
    import torch
    target = Path(folder) / 'cifar10'
    target.mkdir(parents=True, exist_ok=True)
    for split in ('train', 'test'):
        s = data[split]
        content = {'images': s['images'].contiguous().clone(), 'labels': s['labels'].to(torch.int64).clone(),
                   'classes': [str(c) for c in s['classes']]}
        atomic_write(target / f'{split}.pt', lambda tmp: torch.save(content, tmp))
    return target


def gpu_name():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'], timeout=20,
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()
        return found[0].strip() if found else None
    return None


# ---------------------------------------------------------------- the check


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A bad flag in one sentence, without argparse's usage lines (--help has them)."""
        print(f'gpu_check.py: error: {message}', file=sys.stderr)
        sys.exit(2)


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', required=True, metavar='DIR', help='CIFAR-10 as the scripts read it')
    p.add_argument('--originals', metavar='ORIG', help='holds cifar10-airbench/, cifar10-speedrun/')
    p.add_argument('--scripts', default=','.join(ORDER), help='a comma-separated subset (default: all)')
    p.add_argument('--runs', type=positive(int), default=10, metavar='N', help='timed runs each (default 10)')
    p.add_argument('--seed', type=int, default=0, metavar='S', help="the scripts' --seed (default 0)")
    p.add_argument('--device', choices=['auto', 'cuda', 'cpu', 'mps'], default='auto',
                   help="the scripts' --device (default auto)")
    p.add_argument('--no-warmup', action='store_true', help='no warmup run (the originals run as published)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', dest='overrides',
                   help="passed to every project script (not to the originals)")
    p.add_argument('--budget-s', type=budget, action='append', default=[], metavar='[NAME=]SECONDS',
                   help='seconds per script (default 300), or for one script and its original')
    p.add_argument('--total-s', type=positive(float), metavar='SECONDS', help='seconds for the whole check')
    p.add_argument('--grace-s', type=positive(float), default=5.0, metavar='SECONDS',
                   help='from SIGTERM to SIGKILL for a script past its budget (default 5)')
    p.add_argument('--shared-compile-cache', action='store_true',
                   help="torch.compile's default cache instead of a fresh one per process")
    p.add_argument('--out', default=f"logs/gpu-check-{time.strftime('%Y%m%d-%H%M%S')}", metavar='OUT',
                   help='a new folder for the table and the logs (default logs/gpu-check-<date>-<time>)')
    p.add_argument('--tar', metavar='FILE', help='also a tar.gz of OUT, rewritten after every script')
    return p.parse_args(argv)


def validated(args):
    """Every input checked before any work, so a bad one costs no GPU time; returns what the check needs."""
    scripts = chosen_scripts(args.scripts)
    for pair in args.overrides:
        if '=' not in pair:
            raise CheckError(f'--set {pair!r} is not KEY=VALUE, e.g. --set opt.train_epochs=2')
    check_data_dir(args.data_dir)
    budgets = dict(args.budget_s)
    texts, originals = {}, {}
    if args.originals:
        if not Path(args.originals).is_dir():
            raise CheckError(f'--originals {args.originals} is not a folder: docs/gpu.md says how to make it')
        for script in scripts:
            texts[script] = original_text(args.originals, script, args.runs, not args.no_warmup)
        for repo in dict.fromkeys(ORIGINALS[s][0] for s in scripts):
            folder = Path(args.originals).resolve() / repo
            originals[repo] = {'path': str(folder), 'commit': commit_of(folder)}
    tar = Path(args.tar).resolve() if args.tar else None
    if tar and Path(args.out).resolve() in tar.parents:
        raise CheckError(f'--tar {args.tar} is inside --out {args.out}: a tar of OUT cannot hold itself')
    return {'scripts': scripts, 'default_budget': budgets.pop('', 300.0), 'budgets': budgets, 'texts': texts,
            'originals': originals, 'tar': tar, 'out': prepare_out(args.out, tar)}


def run_project(row, args, out, env, saved):
    """The project's script as a user runs it, its figures from its own log.json."""
    command = [sys.executable, str(REPO / f"{row['script']}.py"), '--data-dir',
               os.path.abspath(args.data_dir), '--runs', str(args.runs), '--seed', str(args.seed),
               '--device', args.device, '--log-dir', str(out / 'logs')]
    command += ['--no-warmup'] * args.no_warmup + [a for pair in args.overrides for a in ('--set', pair)]
    (out / 'logs').mkdir(exist_ok=True)
    before = set((out / 'logs').glob(f"{row['script']}-*"))
    row['command'] = command
    result = run_process(command, row['budget_seconds'], args.grace_s, *saved, env=env)
    project_row(row, result, out / 'logs', before)
    if row['log']:
        row['log'] = str(Path(row['log']).resolve().relative_to(out))
    return result


def run_original(row, args, out, folder, cifar, text, env, saved):
    """The original's patched copy in folder, beside ./cifar10; the copy and its logs kept in OUT."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'cifar10').symlink_to(cifar)
    name = Path(ORIGINALS[row['script']][1]).name
    (folder / name).write_text(text)
    kept = out / 'originals' / row['script']
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / name, kept / name)
    row.update(command=[sys.executable, name], source='/'.join(ORIGINALS[row['script']][:2]))
    result = run_process(row['command'], row['budget_seconds'], args.grace_s, *saved, cwd=folder, env=env)
    original_row(row, result)
    if (folder / 'logs').is_dir():  # logs/<uuid>/log.pt, as the original saves it
        shutil.copytree(folder / 'logs', kept / 'logs', dirs_exist_ok=True)
        row['log'] = str((kept / 'logs').relative_to(out))
    return result


def budget_for(script, given, total_s, elapsed):
    """The seconds a script may run: its budget, cut to what is left of --total-s; None under 1 s left."""
    seconds = given['budgets'].get(script, given['default_budget'])
    if total_s is None:
        return seconds
    return min(seconds, total_s - elapsed) if total_s - elapsed >= 1 else None


def skip_originals(args):
    """Why the originals cannot run here (one line), or None."""
    import torch
    if args.device not in ('auto', 'cuda') or not torch.cuda.is_available():
        where = 'no CUDA device' if args.device in ('auto', 'cuda') else f'--device {args.device}'
        return f'originals: skipped: they hard-code CUDA (.cuda(), torch.cuda.Event); this check has {where}'
    if not importlib.util.find_spec('torchvision'):
        return 'originals: skipped: they import torchvision, which this python does not have'
    return None


def check(args):
    """The whole check; returns the exit status."""
    given = validated(args)
    out, tar, start = given['out'], given['tar'], time.monotonic()
    sys.path.insert(0, str(REPO))
    import torch
    import airbench94
    try:
        data, source = airbench94.load_cifar10(args.data_dir)
    except airbench94.UserError as e:
        raise CheckError(str(e)) from None
    skip = skip_originals(args) if args.originals else None
    run_originals = bool(args.originals) and not skip
    notes = [skip] if skip else []
    if run_originals and args.overrides:
        notes.append("--set applies to the project's scripts only: the originals ran as published")
    for note in notes:
        say(note)
    doc = {'tool': 'tools/gpu_check.py', 'argv': sys.argv, 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
           'status': 'running', 'device': args.device, 'torch': torch.__version__,
           'data': {'dir': os.path.abspath(args.data_dir), 'source': source,
                    'train': len(data['train']['labels']), 'test': len(data['test']['labels']),
                    'origin': str(data['train'].get('origin'))},
           'runs': args.runs, 'seed': args.seed, 'overrides': args.overrides, 'originals': given['originals'],
           'notes': notes, 'rows': [], 'ratios': []}
    for script in given['scripts']:
        doc['rows'].append({'script': script, 'variant': 'project', 'status': 'pending'})
        if args.originals:
            doc['rows'].append({'script': script, 'variant': 'original',
                                'status': 'pending' if run_originals else 'skipped'})
    work = Path(tempfile.mkdtemp(prefix='gpu-check-'))
    try:
        cifar = prepare_originals_data(data, work / 'data') if run_originals else None
        del data
        gpu = gpu_name() if run_originals else None
        write_table(out, doc, tar)
        for row in doc['rows']:
            if row['status'] != 'pending':
                continue
            row['budget_seconds'] = budget_for(row['script'], given, args.total_s, time.monotonic() - start)
            if row['budget_seconds'] is None:
                row['status'] = 'not run (the total budget is spent)'
                continue
            label = f"{row['script']}-{row['variant']}"
            env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
            if not args.shared_compile_cache:  # a cold compile, and nothing autotuned by another script
                env.update(TORCHINDUCTOR_CACHE_DIR=str(work / 'cache' / label / 'inductor'),
                           TRITON_CACHE_DIR=str(work / 'cache' / label / 'triton'))
            saved = [out / 'output' / f'{label}.out.txt', out / 'output' / f'{label}.err.txt']
            row.update(status='running', output=str(saved[0].relative_to(out)))
            say(f"{label}: started, budget {row['budget_seconds']:.0f} s")
            write_table(out, doc, tar)
            try:
                if row['variant'] == 'project':
                    result = run_project(row, args, out, env, saved)
                else:
                    result = run_original(row, args, out, work / label, cifar, given['texts'][row['script']],
                                          env, saved)
                    row.update(device=gpu or 'cuda', torch=torch.__version__)
            except KeyboardInterrupt:
                row['status'] = 'interrupted'
                raise
            row.update(returncode=result['returncode'], wall_seconds=result['wall_seconds'])
            if row['status'] != 'complete':
                row['message'] = last_sentence(result)
            figures = (f", TTA {100 * row['tta_mean']:.2f}%, {row['seconds_per_run']:.3f} s/run"
                       if row['runs'] else '')
            say(f"{label}: {row['status']}, {row['runs']} runs{figures}, wall {result['wall_seconds']:.1f} s")
            write_table(out, doc, tar)
        doc['status'] = 'finished'
    except KeyboardInterrupt:
        doc['status'] = 'interrupted'
        for row in doc['rows']:
            if row['status'] == 'pending':
                row['status'] = 'not run (interrupted)'
        raise
    finally:
        doc['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
        with contextlib.suppress(OSError):
            write_table(out, doc, tar)
        shutil.rmtree(work, ignore_errors=True)
    say('')
    say(table_text(doc).rstrip('\n'))
    say(f'table: {out / "table.txt"}' + (f'; everything: {tar}' if tar else ''))
    return 0 if all(r['status'] in ('complete', 'skipped') for r in doc['rows']) else 1


def main(argv=None):
    def terminated(signum, frame):  # as Ctrl-C: the running script is stopped, the table written
        raise KeyboardInterrupt('terminated (SIGTERM)', 143)
    signal.signal(signal.SIGTERM, terminated)
    args = parse_args(argv)
    try:
        sys.exit(check(args))
    except CheckError as e:
        print(f'gpu_check.py: error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"gpu_check.py: {e.args[0] if e.args else 'interrupted'}; the table keeps every script that "
              'finished', file=sys.stderr)
        sys.exit(e.args[1] if len(e.args) > 1 else 130)


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:  # the reader of the output went away (| head): quietly
        sys.stdout = None
