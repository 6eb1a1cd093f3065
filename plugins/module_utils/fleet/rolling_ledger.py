# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller-side ledger of the hvfleet.drain.rolling_turn action: who holds a turn, who waits.

Each host of a rolling play runs in its own worker process, and two ansible-playbook runs on the same
controller may roll at once: the shared state is one JSON file, read and written only under an exclusive
lock (fcntl.flock on a `.lock` file beside it) and replaced atomically (write a temporary file, then
os.replace), so a reader never sees half a ledger.

An entry is one host in one rollout (a rollout: one play of one ansible-playbook run). It belongs to the run
that wrote it, identified by the controller's pid and that process's start time (so a recycled pid is not
mistaken for it). An entry of a run that is gone counts as released, and is pruned at the next write: a
crashed run never blocks the others.

`consider` is the admission step, pure: from the ledger's entries, the play's hosts and settings it asks
rolling_admission.decide() whether one waiting host may start now, and if not, why and for whom it waits.
No Ansible imports: the action plugin supplies the variables, the clock and the process checks.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_admission as RA

VERSION = 1
_REBUILD = "remove the file when no rolling run is going on; it is rebuilt on the next turn."
WAITING, IN_FLIGHT, RELEASED = "waiting", "in_flight", "released"
OK, FAILED = "ok", "failed"


class LedgerError(HvfleetError):
    """The ledger file cannot be read, locked or written."""


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """An ansible-playbook process: its pid and its start time (clock ticks after boot; None when unknown)."""

    pid: int
    start: Optional[int] = None

    @property
    def key(self) -> str:
        return f"{self.pid}:{self.start if self.start is not None else '-'}"


def process_start(pid: int) -> Optional[int]:
    """The start time of process `pid` (field 22 of /proc/PID/stat), or None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            stat = stream.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count fields after its closing one
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def run_of(pid: int) -> Run:
    return Run(pid, process_start(pid))


def run_alive(run: Run) -> bool:
    """Is the process of `run` still the one that wrote the entry (same pid, same start time)?"""
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process exists with that pid: compare start times below
    if run.start is None:
        return True
    return process_start(run.pid) == run.start


# --------------------------------------------------------------------------- entries and the file


@dataclass
class Entry:
    rollout: str  # "<run key>/<play id>"
    host: str
    run_pid: int
    run_start: Optional[int]
    state: str  # WAITING, IN_FLIGHT or RELEASED
    since: float  # epoch seconds of the last state change
    outcome: Optional[str] = None  # OK or FAILED once released
    domain: Optional[str] = None  # the host's failure domain value (shared with other runs)
    play: str = ""

    @property
    def run(self) -> Run:
        return Run(self.run_pid, self.run_start)


@dataclass
class LedgerData:
    entries: list[Entry] = field(default_factory=list)

    def find(self, rollout: str, host: str) -> Optional[Entry]:
        return next((e for e in self.entries if e.rollout == rollout and e.host == host), None)

    def drop(self, entry: Entry) -> None:
        self.entries = [e for e in self.entries if e is not entry]


def _entry(raw: Any, path: str) -> Entry:
    try:
        return Entry(**raw)
    except TypeError as ex:
        raise LedgerError(f"rolling ledger {path} holds an entry that cannot be read ({ex}): {raw!r}.",
                          _REBUILD) from None


class Ledger:
    """The ledger file at `path`; use `with ledger.locked() as data:` and change `data` in place to write it."""

    def __init__(self, path: str, alive: Callable[[Run], bool] = run_alive) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.alive = alive

    @contextlib.contextmanager
    def locked(self) -> Iterator[LedgerData]:
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as ex:
            raise LedgerError(f"cannot open the rolling ledger lock {self.path}.lock: {ex.strerror}.",
                              "give a ledger path in a directory the controller user can write "
                              "(option ledger of hvfleet.drain.rolling_turn).") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(self._dump(data), sort_keys=True)
            self._prune(data)
            yield data
            after = self._dump(data)
            if json.dumps(after, sort_keys=True) != before:
                self._write(after)
        finally:
            os.close(lock)  # closing drops the flock

    def _read(self) -> LedgerData:
        try:
            with open(self.path, encoding="utf-8") as stream:
                raw = json.load(stream)
        except FileNotFoundError:
            return LedgerData()
        except (OSError, ValueError) as ex:
            raise LedgerError(f"cannot read the rolling ledger {self.path}: {ex}.", _REBUILD) from None
        if not isinstance(raw, dict) or raw.get("version") != VERSION or not isinstance(raw.get("entries"), list):
            raise LedgerError(f"rolling ledger {self.path} is not a version {VERSION} ledger.",
                              "remove the file when no rolling run is going on, or give another ledger path.")
        return LedgerData([_entry(item, self.path) for item in raw["entries"]])

    @staticmethod
    def _dump(data: LedgerData) -> dict[str, Any]:
        return {"version": VERSION, "entries": [asdict(e) for e in data.entries]}

    def _prune(self, data: LedgerData) -> None:
        """Forget the entries of runs that are gone (their turns count as released)."""
        verdict: dict[Run, bool] = {}
        kept = []
        for entry in data.entries:
            run = entry.run
            if run not in verdict:
                verdict[run] = self.alive(run)
            if verdict[run]:
                kept.append(entry)
        data.entries = kept

    def _write(self, content: dict[str, Any]) -> None:
        directory = os.path.dirname(self.path)
        try:
            handle, temporary = tempfile.mkstemp(prefix=".rolling-ledger.", dir=directory)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    json.dump(content, stream, indent=1, sort_keys=True)
                    stream.write("\n")
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as ex:
            hint = "free some space" if ex.errno == errno.ENOSPC else "give a ledger path the controller user can write"
            raise LedgerError(f"cannot write the rolling ledger {self.path}: {ex.strerror}.", f"{hint}.") from None


# --------------------------------------------------------------------------- hosts from variables


def lookup(variables: Any, path: str) -> Any:
    """The value at a variable name or dotted path of a mapping, or None when absent."""
    value = variables
    for part in path.split("."):
        try:
            value = value[part]
        except (KeyError, TypeError, IndexError):
            return None
    return value


def _mib(name: str, variable: str, found: object) -> Optional[float]:
    if found is None or found == "":
        return None
    try:
        figure = float(str(found))
    except ValueError:
        raise RA.RollingConfigError(f"{variable} of {name} must be a number of MiB, got {found!r}.",
                                    f"set {variable} to a number, or leave it unset (no capacity check).") from None
    if figure < 0:
        raise RA.RollingConfigError(f"{variable} of {name} must not be negative, got {found!r}.",
                                    f"set {variable} to the MiB figure of {name}.")
    return figure


def make_host(name: str, value: Callable[[str], object], settings: RA.Settings) -> RA.Host:
    """A rolling_admission.Host from a host's variables; `value(path)` returns a templated variable or None."""
    domain = None
    if settings.failure_domain_key:
        found = value(settings.failure_domain_key)
        domain = RA.UNDEFINED_DOMAIN if found is None or found == "" else str(found)
    try:
        window = RA.parse_window(value("hvfleet_maintenance_window"))
    except RA.RollingConfigError as ex:
        raise RA.RollingConfigError(f"host {name}: {ex.message}", ex.hint) from None
    return RA.Host(name=name, domain=domain, order=value(settings.order_key) if settings.order_key else None,
                   vm_memory_mib=_mib(name, "hvfleet_vm_memory_mib", value("hvfleet_vm_memory_mib")),
                   free_memory_mib=_mib(name, "hvfleet_free_memory_mib", value("hvfleet_free_memory_mib")),
                   window=window)


# --------------------------------------------------------------------------- the admission step


@dataclass(frozen=True)
class Turn:
    admitted: bool
    reason: str = ""  # why the host waits (empty when admitted)
    final: bool = False  # True: the host will never be admitted in this rollout
    in_flight: tuple[str, ...] = ()  # who holds a turn now (hosts of other runs as "host (run pid N)")
    waits_for: tuple[str, ...] = ()  # whom the host waits for


def _foreign(entry: Entry) -> str:
    return f"{entry.host} (run pid {entry.run_pid})"


def consider(data: LedgerData, rollout: str, host: str, hosts: list[RA.Host], settings: RA.Settings,
             expected: Iterable[str] = (), now: Optional[datetime.datetime] = None) -> Turn:
    """May `host` (with a WAITING entry of `rollout` in `data`) start now? Does not change `data`.

    hosts: every host of the play (their figures); expected: hosts of the play that have no entry in this
    rollout yet but will ask (the action passes those that have not arrived within its arrival timeout):
    a host ahead in order waits for them, so that the order does not depend on who asks first.
    Entries of other rollouts in flight take their slot and their failure domain, whoever runs them.
    """
    now = now or datetime.datetime.now(RA.UTC)
    mine = [e for e in data.entries if e.rollout == rollout]
    others = [e for e in data.entries if e.rollout != rollout and e.state == IN_FLIGHT]
    busy_elsewhere = [e for e in others if e.host == host]
    if busy_elsewhere:
        who = tuple(_foreign(e) for e in busy_elsewhere)
        return Turn(False, f"{host} is in flight in another run ({', '.join(who)})", False, who, who)
    in_flight = [e.host for e in mine if e.state == IN_FLIGHT]
    finished = [e.host for e in mine if e.state == RELEASED]
    failed = [e.host for e in mine if e.state == RELEASED and e.outcome == FAILED]
    waiting = [e.host for e in mine if e.state == WAITING]
    known = {h.name for h in hosts}
    foreign_hosts = [RA.Host(name=_foreign(e), domain=e.domain, vm_memory_mib=0.0, free_memory_mib=0.0)
                     for e in others]
    everyone = list(hosts) + foreign_hosts
    candidates = [h for h in waiting if h in known] + [h for h in expected if h in known and h not in waiting]
    decision = RA.decide(settings, everyone, in_flight=in_flight + [h.name for h in foreign_hosts],
                         finished=finished, failed=failed, now=now, candidates=candidates)
    holding = tuple(in_flight) + tuple(h.name for h in foreign_hosts)
    if host in decision.admit:
        return Turn(True, "", False, holding)
    ahead = tuple(h for h in decision.admit if h != host)  # they take the free slots first, when they ask
    reason = decision.waiting.get(host, "not a host of the play")
    final = decision.final or reason.startswith(RA.REASON_FAILURES)
    if reason.startswith(RA.REASON_FAILURES):
        blockers: tuple[str, ...] = tuple(failed)
    elif reason.startswith(RA.REASON_DOMAIN):
        mine_domain = next((h.domain for h in everyone if h.name == host), None)
        blockers = tuple(h.name for h in everyone if h.domain == mine_domain and (h.name in holding or h.name in ahead))
    else:
        blockers = holding + ahead
    if ahead and not final:
        reason += f"; next in order: {', '.join(ahead)}"
    return Turn(False, reason, final, holding, blockers)


def release_outcome(value: object) -> str:
    text = str(value).strip().lower()
    if text not in (OK, FAILED):
        raise RA.RollingConfigError(f"outcome must be ok or failed, got {value!r}.",
                                    "give outcome: ok when the host's maintenance succeeded, failed otherwise.")
    return text


# --------------------------------------------------------------------------- taking and giving back a turn


@dataclass(frozen=True)
class Request:
    """One host asking for its turn in a rollout (what the action plugin read from the play)."""

    ledger: Ledger
    run: Run
    rollout: str
    host: str
    hosts: list[RA.Host]  # every host of the play
    settings: RA.Settings
    batch: tuple[str, ...] = ()  # the hosts of the play still active (the ones expected to ask)
    play: str = ""


@dataclass(frozen=True)
class Outcome:
    turn: Turn
    waited: float  # seconds
    timed_out: bool = False
    already: bool = False  # the host held its turn already


def wait_turn(req: Request, timeout: float, poll_interval: float, arrival_timeout: float,
              say: Callable[[Turn], None] = lambda turn: None, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep,
              now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(RA.UTC)) -> Outcome:
    """Register `req.host` as waiting, then look at the ledger every `poll_interval` seconds until it is admitted
    (its entry is then in flight), admission is over for it (final), or `timeout` seconds passed (its entry is
    then removed). `say` is called whenever the reason to wait, or whom it waits for, changes."""
    me = next((h for h in req.hosts if h.name == req.host), None)
    domain = me.domain if me is not None else None
    started = clock()

    def fresh() -> Entry:
        return Entry(rollout=req.rollout, host=req.host, run_pid=req.run.pid, run_start=req.run.start,
                     state=WAITING, since=time.time(), domain=domain, play=req.play)

    with req.ledger.locked() as data:
        entry = data.find(req.rollout, req.host)
        if entry is not None and entry.state == IN_FLIGHT:
            return Outcome(Turn(True), 0.0, already=True)
        if entry is not None:
            data.drop(entry)
        data.entries.append(fresh())
    said = None
    while True:
        elapsed = clock() - started
        with req.ledger.locked() as data:
            entry = data.find(req.rollout, req.host)
            if entry is None:  # only a hand-edited ledger loses it: register again
                entry = fresh()
                data.entries.append(entry)
            expected: list[str] = []
            if elapsed < arrival_timeout:
                expected = [h for h in req.batch if h != req.host and data.find(req.rollout, h) is None]
            turn = consider(data, req.rollout, req.host, req.hosts, req.settings, expected, now())
            if turn.admitted:
                entry.state, entry.since = IN_FLIGHT, time.time()
                return Outcome(turn, elapsed)
            timed_out = elapsed >= timeout
            if turn.final or timed_out:
                data.drop(entry)
                return Outcome(turn, elapsed, timed_out=timed_out and not turn.final)
        if (turn.reason, turn.waits_for) != said:
            said = (turn.reason, turn.waits_for)
            say(turn)
        sleep(max(0.01, min(poll_interval, timeout - elapsed)))


def give_back(ledger: Ledger, rollout: str, host: str, outcome: str) -> bool:
    """End `host`'s turn with `outcome` (OK or FAILED); False when it held none (a waiting entry is removed)."""
    outcome = release_outcome(outcome)
    with ledger.locked() as data:
        entry = data.find(rollout, host)
        if entry is None or entry.state != IN_FLIGHT:
            if entry is not None and entry.state == WAITING:
                data.drop(entry)
            return False
        entry.state, entry.outcome, entry.since = RELEASED, outcome, time.time()
    return True
