"""The gesture-driven elevator: a time-stepped state machine and its rendering.

:class:`Elevator` is pure: ``request(floor)`` adds a stop, ``step(dt)`` advances the simulation by
``dt`` seconds and returns the events that happened (with their exact times). The service order is
the one real elevators use (the "LOOK" / collective control rule): keep going in the travel direction
and stop at the nearest requested floor ahead; when none is left ahead, turn round and serve the
nearest one behind. An idle car goes to the nearest request (ties: the lower floor).

A duplicate request (a floor already pending) and a request for the floor the car stands at are
ignored. On arrival the doors open, stay open ``door_seconds``, then close, and the car departs for
the next stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError

_EPS = 1e-9


@dataclass(frozen=True)
class Event:
    """Something that happened at time ``t`` (seconds since the start): ``event`` is one of
    ``request, depart, arrive, doors_open, doors_close``; ``floor`` the floor it concerns."""

    t: float
    event: str
    floor: int

    def to_dict(self) -> dict:
        """``{t, event, floor}`` for the JSONL log (``t`` rounded to 0.1 ms)."""
        return {"t": round(self.t, 4), "event": self.event, "floor": self.floor}


class Elevator:
    """One car in a building of ``floors`` floors (0 .. floors-1).

    Args:
        floors: number of floors (one per gesture class).
        floors_per_second: travel speed.
        door_seconds: how long the doors stay open at a stop.
        start_floor: where the car waits at ``t = 0``, doors closed.
    """

    def __init__(self, floors: int, floors_per_second: float = 1.0, door_seconds: float = 2.0,
                 start_floor: int = 0) -> None:
        if floors < 2:
            raise ConfigError(f"an elevator needs at least 2 floors, got {floors}.")
        if floors_per_second <= 0 or door_seconds < 0:
            raise ConfigError(f"speed must be > 0 floors/s and door time >= 0 s, got {floors_per_second} "
                              f"and {door_seconds}.")
        if not 0 <= start_floor < floors:
            raise ConfigError(f"start floor {start_floor} is outside 0..{floors - 1}.")
        self.floors = floors
        self.speed = floors_per_second
        self.door_seconds = door_seconds
        self.t = 0.0
        self.position = float(start_floor)  # in floors; fractional while moving
        self.direction = 0  # +1 up, -1 down, 0 idle
        self.moving = False
        self.doors_open = False
        self._door_timer = 0.0
        self.pending: list[int] = []  # in request order
        self.log: list[Event] = []

    # ------------------------------------------------------------------ queries
    @property
    def current_floor(self) -> int:
        """The floor the car is at, or (while moving) the last floor it passed."""
        f = int(np.floor(self.position + _EPS)) if self.direction >= 0 else int(np.ceil(self.position - _EPS))
        return min(max(f, 0), self.floors - 1)

    def _at_floor(self) -> int | None:
        r = round(self.position)
        return r if abs(self.position - r) < _EPS else None

    def next_stop(self) -> int | None:
        """The floor the car will serve next under the LOOK rule, or ``None`` when nothing is pending."""
        if not self.pending:
            return None
        pos, d = self.position, self.direction
        if d != 0:
            ahead = [f for f in self.pending if (f - pos) * d > _EPS]
            if ahead:
                return min(ahead, key=lambda f: abs(f - pos))
            return min(self.pending, key=lambda f: abs(f - pos))
        return min(self.pending, key=lambda f: (abs(f - pos), f))

    # ------------------------------------------------------------------ commands
    def request(self, floor: int) -> bool:
        """Ask the car to stop at ``floor``. Returns ``False`` (and changes nothing) for a floor already
        pending or the floor where the car stands (not while it is passing by)."""
        if not 0 <= floor < self.floors:
            raise ConfigError(f"floor {floor} is outside 0..{self.floors - 1}.")
        if floor in self.pending or (not self.moving and self._at_floor() == floor):
            return False
        self.pending.append(floor)
        self._emit("request", floor)
        return True

    def step(self, dt: float) -> list[Event]:
        """Advance the simulation by ``dt`` seconds; returns the events of that interval in time order."""
        if dt < 0:
            raise ConfigError(f"dt must be >= 0 seconds, got {dt}; pass the time elapsed since the last step.")
        start = len(self.log)
        end = self.t + dt
        while self.t < end - _EPS:
            left = end - self.t
            if self.doors_open:
                used = min(left, self._door_timer)
                self.t += used
                self._door_timer -= used
                if self._door_timer <= _EPS:
                    self.doors_open = False
                    self._emit("doors_close", self._at_floor())
                continue
            target = self.next_stop()
            if target is None:
                self.direction = 0
                self.t = end
                break
            if not self.moving:
                self.moving = True
                self.direction = 1 if target > self.position else -1
                self._emit("depart", self.current_floor)
            self.direction = 1 if target > self.position else -1
            distance = abs(target - self.position)
            travel = min(left, distance / self.speed)
            self.t += travel
            self.position += self.direction * travel * self.speed
            if abs(target - self.position) <= _EPS * 10:
                self.position = float(target)
                self.moving = False
                self.pending.remove(target)
                self._emit("arrive", target)
                self.doors_open = True
                self._door_timer = self.door_seconds
                self._emit("doors_open", target)
        self.t = max(self.t, end)
        return self.log[start:]

    def _emit(self, event: str, floor: int | None) -> None:
        self.log.append(Event(self.t, event, int(floor if floor is not None else self.current_floor)))


def render_elevator(elevator: Elevator, labels: Sequence[str], camera: np.ndarray | None = None,
                    gesture: str = "", height: int = 480) -> np.ndarray:
    """The elevator view (RGB): the shaft with floor labels, the car and its doors, pending requests
    (red marks), the camera frame, the recognised gesture, and the latest events."""
    import cv2

    from .render import AMBER, GREEN, GREY, RED, WHITE, put_text, thumbnail

    n = elevator.floors
    shaft_w, margin = 190, 10
    floor_h = (height - 2 * margin) / n
    side = height // 2
    canvas = np.full((height, shaft_w + side + 3 * margin, 3), 30, dtype=np.uint8)

    def y_of(pos: float) -> int:  # top of the storey at position ``pos`` (floor 0 at the bottom)
        return int(round(height - margin - (pos + 1) * floor_h))

    for f in range(n):
        y = y_of(f)
        cv2.line(canvas, (margin, y + int(floor_h)), (shaft_w, y + int(floor_h)), (70, 70, 70), 1)
        color = RED if f in elevator.pending else GREY
        name = f"{f:>2}" if str(labels[f]) == str(f) else f"{f:>2} {str(labels[f])[:8]}"
        put_text(canvas, f"floor {name}" if str(labels[f]) == str(f) else name, (margin, y + int(floor_h / 2) - 6),
                 0.38, color, None)
        if f in elevator.pending:
            cv2.circle(canvas, (shaft_w - 8, y + int(floor_h / 2)), 4, RED, -1)
    x0, x1 = 110, shaft_w - 20
    cv2.rectangle(canvas, (x0 - 2, margin), (x1 + 2, height - margin), (90, 90, 90), 1)
    top = y_of(elevator.position) + 2
    bottom = top + int(floor_h) - 4
    cv2.rectangle(canvas, (x0, top), (x1, bottom), AMBER if elevator.moving else GREEN, 2)
    mid = (x0 + x1) // 2
    gap = (x1 - x0) // 3 if elevator.doors_open else 0
    cv2.rectangle(canvas, (x0 + 2, top + 2), (mid - gap // 2, bottom - 2), (120, 120, 120), -1)
    cv2.rectangle(canvas, (mid + gap // 2, top + 2), (x1 - 2, bottom - 2), (120, 120, 120), -1)

    x = shaft_w + 2 * margin
    if camera is not None:
        canvas[margin:margin + side, x:x + side] = thumbnail(camera, side)
    else:
        cv2.rectangle(canvas, (x, margin), (x + side, margin + side), GREY, 1)
    y = margin + side + 8
    y = put_text(canvas, gesture or "no gesture", (x, y), 0.5, WHITE)
    state = "doors open" if elevator.doors_open else ("moving " + ("up" if elevator.direction > 0 else "down")
                                                       if elevator.moving else "idle")
    y = put_text(canvas, f"t={elevator.t:5.1f}s floor {elevator.current_floor} {state}", (x, y), 0.45, GREY)
    y = put_text(canvas, "pending: " + (" ".join(map(str, elevator.pending)) or "-"), (x, y), 0.45, RED)
    for e in elevator.log[-max(0, (height - y) // 18):][::-1]:
        if y > height - 18:
            break
        y = put_text(canvas, f"{e.t:6.1f}s {e.event} {e.floor}", (x, y), 0.4, GREY, None)
    return canvas
