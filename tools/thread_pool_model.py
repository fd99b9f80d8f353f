"""Exhaustive interleaving check of the ThreadPool job protocol (kernels/cpu/thread_pool.cpp)
at sequential consistency: every atomic op and every mutex/cv step is one transition.
Checks: each chunk of each job runs exactly once, only with that job's fields, done
increments land in their own job, and no reachable state is a deadlock (nobody can move
and the caller has not finished).

Variants (first argument): old = the protocol before the claim word carried the job's chunk
count (finds a chunk run with the wrong job's fields); current = before workers read the
epoch ahead of `stop` (finds the shutdown deadlock); current_swap = the code now (default).
Small configurations only: larger ones need more than 11 GB.
  python3 tools/thread_pool_model.py [variant]"""
import sys

def run(jobs, n_workers, spurious, variant="current"):
    T = n_workers + 1  # thread 0 = caller
    swap = variant.endswith('_swap')
    variant = variant.replace('_swap', '')
    # shared: epoch, claim(job,chunks,next), done, done_job, stop, fn_job, execs(tuple), sleepers(2), mutex(2)
    init_sh = dict(epoch=0, claim=(0, 0, 0), done=0, done_job=0, stop=False, fn_job=None,
                   execs=(), sl=(0, 0), mx=(None, None), n_chunks=0)
    caller = dict(pc='C_start', i=0, job=0, cur=None, c=0, ch=0, stk=())
    workers = [dict(pc='W_wait', seen=0, job=0, cur=None, c=0, ch=0, stk=()) for _ in range(n_workers)]

    def freeze(sh, ths):
        return (tuple(sorted(sh.items())), tuple(tuple(sorted(t.items())) for t in ths))

    def thaw(key):
        sh, ths = key
        return dict(sh), [dict(t) for t in ths]

    def cond(sh, th, tid, which):
        if which == 'epoch':
            return sh['epoch'] != th['seen']
        if which == 'done':
            return sh['done'] == jobs[th['i']]
        raise ValueError

    def setsl(sh, p, d):
        sl = list(sh['sl']); sl[p] += d; sh['sl'] = tuple(sl)

    def setmx(sh, p, v):
        mx = list(sh['mx']); mx[p] = v; sh['mx'] = tuple(mx)

    def push(th, ret, **frame):
        th['stk'] = th['stk'] + ((ret, tuple(sorted(frame.items()))),)

    def frame(th):
        return dict(th['stk'][-1][1])

    def ret(th):
        r = th['stk'][-1][0]
        th['stk'] = th['stk'][:-1]
        th['pc'] = r

    class Violation(Exception):
        pass

    def steps(sh0, ths0, tid):
        """Successors of thread tid: list of (sh, ths, kind) with kind 'real' or 'spurious'."""
        out = []
        sh = dict(sh0); ths = [dict(t) for t in ths0]; th = ths[tid]
        pc = th['pc']

        def emit(kind='real'):
            out.append((sh, ths, kind))

        # ---- parker wait: frame p, cond
        if pc == 'PK_lock':
            f = frame(th)
            if sh['mx'][f['p']] is None:
                setmx(sh, f['p'], tid); th['pc'] = 'PK_inc'; emit()
            return out
        if pc == 'PK_inc':
            setsl(sh, frame(th)['p'], +1); th['pc'] = 'PK_check'; emit(); return out
        if pc == 'PK_check':
            f = frame(th)
            if cond(sh, th, tid, f['cond']):
                th['pc'] = 'PK_dec'
            else:
                setmx(sh, f['p'], None); th['pc'] = 'PK_sleep'
            emit(); return out
        if pc == 'PK_sleep':
            if spurious:
                th['pc'] = 'PK_relock'; emit('spurious')
            return out
        if pc == 'PK_relock':
            f = frame(th)
            if sh['mx'][f['p']] is None:
                setmx(sh, f['p'], tid); th['pc'] = 'PK_check'; emit()
            return out
        if pc == 'PK_dec':
            setsl(sh, frame(th)['p'], -1); th['pc'] = 'PK_unlock'; emit(); return out
        if pc == 'PK_unlock':
            setmx(sh, frame(th)['p'], None); ret(th); emit(); return out
        # ---- wake_all: frame p
        if pc == 'WK_load':
            f = frame(th)
            if sh['sl'][f['p']] == 0:
                ret(th)
            else:
                th['pc'] = 'WK_lock'
            emit(); return out
        if pc == 'WK_lock':
            f = frame(th)
            if sh['mx'][f['p']] is None:
                setmx(sh, f['p'], tid); th['pc'] = 'WK_unlock'; emit()
            return out
        if pc == 'WK_unlock':
            setmx(sh, frame(th)['p'], None); th['pc'] = 'WK_notify'; emit(); return out
        if pc == 'WK_notify':
            p = frame(th)['p']
            for o in ths:
                if o['pc'] == 'PK_sleep' and dict(o['stk'][-1][1])['p'] == p:
                    o['pc'] = 'PK_relock'
            ret(th); emit(); return out
        # ---- run_chunks: frame job
        if pc == 'R_load':
            th['cur'] = sh['claim']; th['pc'] = 'R_check'; emit(); return out
        if pc == 'R_check':
            job = frame(th)['job']
            cj, cch, cn = th['cur']
            chunks = cch if variant == 'current' else sh['n_chunks']
            if cj != job or cn >= chunks:
                ret(th)
            else:
                th['pc'] = 'R_cas'
            emit(); return out
        if pc == 'R_cas':
            if sh['claim'] == th['cur']:
                cj, cch, cn = th['cur']
                sh['claim'] = (cj, cch, cn + 1)
                th['c'] = cn; th['ch'] = cch if variant == 'current' else sh['n_chunks']
                th['pc'] = 'R_run'
            else:
                th['cur'] = sh['claim']; th['pc'] = 'R_check'
            emit(); return out
        if pc == 'R_run':
            job = frame(th)['job']
            if sh['fn_job'] != job:
                raise Violation(f'thread {tid} runs chunk {th["c"]} of job {job} with fields of {sh["fn_job"]}')
            key = (job, th['c'])
            if key in sh['execs']:
                raise Violation(f'chunk {key} ran twice')
            sh['execs'] = tuple(sorted(sh['execs'] + (key,)))
            th['pc'] = 'R_done'; emit(); return out
        if pc == 'R_done':
            job = frame(th)['job']
            if sh['done_job'] != job:
                raise Violation(f'done increment of job {job} lands in job {sh["done_job"]}')
            sh['done'] += 1
            if sh['done'] == th['ch']:
                th['pc'] = 'R_reload'; push(th, 'R_reload', p=1); th['pc'] = 'WK_load'
            else:
                th['pc'] = 'R_reload'
            emit(); return out
        if pc == 'R_reload':
            th['cur'] = sh['claim']; th['pc'] = 'R_check'; emit(); return out
        # ---- worker loop
        if pc == 'W_wait':
            if sh['epoch'] != th['seen']:
                th['pc'] = 'W_stopchk'
            else:
                push(th, 'W_stopchk', p=0, cond='epoch'); th['pc'] = 'PK_lock'
            emit(); return out
        if pc == 'W_stopchk' and not swap:
            th['pc'] = 'W_exit' if sh['stop'] else 'W_seen'; emit(); return out
        if pc == 'W_seen' and not swap:
            th['seen'] = sh['epoch']; push(th, 'W_wait', job=th['seen']); th['pc'] = 'R_load'
            emit(); return out
        if pc == 'W_stopchk' and swap:   # take the epoch first, then look at stop
            th['seen'] = sh['epoch']; th['pc'] = 'W_seen'; emit(); return out
        if pc == 'W_seen' and swap:
            if sh['stop']:
                th['pc'] = 'W_exit'
            else:
                push(th, 'W_wait', job=th['seen']); th['pc'] = 'R_load'
            emit(); return out
        if pc == 'W_exit':
            return out
        # ---- caller
        if pc == 'C_start':
            if th['i'] == len(jobs):
                th['pc'] = 'D_stop'
            else:
                sh['fn_job'] = th['i'] + 1; th['pc'] = 'C_nchunks'
            emit(); return out
        if pc == 'C_nchunks':   # the pre-fix code wrote the chunk count here, apart from claim
            sh['n_chunks'] = jobs[th['i']]; th['pc'] = 'C_done0'; emit(); return out
        if pc == 'C_done0':
            sh['done'] = 0; sh['done_job'] = th['i'] + 1; th['pc'] = 'C_claim'; emit(); return out
        if pc == 'C_claim':
            j = th['i'] + 1
            sh['claim'] = (j, jobs[th['i']], 0) if variant == 'current' else (j, 0, 0)
            th['pc'] = 'C_epoch'; emit(); return out
        if pc == 'C_epoch':
            sh['epoch'] = th['i'] + 1; push(th, 'C_run', p=0); th['pc'] = 'WK_load'; emit(); return out
        if pc == 'C_run':
            push(th, 'C_wait', job=th['i'] + 1); th['pc'] = 'R_load'; emit(); return out
        if pc == 'C_wait':
            if sh['done'] == jobs[th['i']]:
                th['pc'] = 'C_fin'
            else:
                push(th, 'C_fin', p=1, cond='done'); th['pc'] = 'PK_lock'
            emit(); return out
        if pc == 'C_fin':
            j = th['i'] + 1
            ran = sorted(c for (jj, c) in sh['execs'] if jj == j)
            if ran != list(range(jobs[th['i']])):
                raise Violation(f'job {j} returned with chunks {ran}')
            sh['fn_job'] = None; th['i'] += 1; th['pc'] = 'C_start'; emit(); return out
        if pc == 'D_stop':
            sh['stop'] = True; th['pc'] = 'D_epoch'; emit(); return out
        if pc == 'D_epoch':
            sh['epoch'] += 1; push(th, 'D_join', p=0); th['pc'] = 'WK_load'; emit(); return out
        if pc == 'D_join':
            if all(o['pc'] == 'W_exit' for o in ths[1:]):
                th['pc'] = 'C_end'; emit()
            return out
        if pc == 'C_end':
            return out
        raise ValueError(pc)

    start = freeze(init_sh, [caller] + workers)
    seen = {start: None}
    stack = [start]
    deadlocks = 0
    while stack:
        key = stack.pop()
        sh, ths = thaw(key)
        real = 0
        for tid in range(T):
            try:
                succ = steps(sh, ths, tid)
            except Violation as e:
                return f'VIOLATION: {e} (after {len(seen)} states)', len(seen), key, seen
            for nsh, nths, kind in succ:
                if kind == 'real':
                    real += 1
                nk = freeze(nsh, nths)
                if nk not in seen:
                    seen[nk] = key
                    stack.append(nk)
        if real == 0 and ths[0]['pc'] != 'C_end':
            return 'DEADLOCK', len(seen), key, seen
    return 'ok', len(seen), None, seen

def trace(key, seen):
    path = []
    while key is not None:
        path.append(key); key = seen[key]
    return path[::-1]

if __name__ == '__main__':
    variant = sys.argv[1] if len(sys.argv) > 1 else 'current_swap'
    configs = [((2, 2), 1, False), ((2, 2), 1, True), ((2, 3), 2, False), ((3, 2), 2, True), ((2, 3, 2), 2, False), ((2, 2), 3, False)]
    for jobs, nw, sp in configs:

        res, n, key, seen = run(list(jobs), nw, sp, variant)
        print(f'{variant}: jobs={jobs} workers={nw} spurious={sp}: {res}, {n} states', flush=True)
        if res != 'ok':
            sh, ths = key
            print('  final:', dict(sh)); [print('  ', dict(t)['pc'], dict(t)) for t in ths]
            break
