// The gesture-driven elevator: a port of sabr.apps.elevator.Elevator, rule for rule.
// request(floor) adds a stop; step(dt) advances the simulation by dt seconds and returns the events of
// that interval. Service order: the LOOK rule (keep going in the travel direction, stop at the nearest
// requested floor ahead; none ahead: turn round; an idle car goes to the nearest request, ties: the
// lower floor). A duplicate request and a request for the floor the car stands at are ignored. On
// arrival the doors open for doorSeconds, then close, and the car departs for the next stop.

const EPS = 1e-9;

export class Elevator {
  constructor(floors, floorsPerSecond = 1.0, doorSeconds = 2.0, startFloor = 0) {
    if (floors < 2) throw new Error(`an elevator needs at least 2 floors, got ${floors}.`);
    this.floors = floors;
    this.speed = floorsPerSecond;
    this.doorSeconds = doorSeconds;
    this.t = 0;
    this.position = startFloor; // in floors; fractional while moving
    this.direction = 0; // +1 up, -1 down, 0 idle
    this.moving = false;
    this.doorsOpen = false;
    this.doorTimer = 0;
    this.pending = []; // in request order
    this.log = []; // {t, event, floor}
  }

  // The floor the car is at, or (while moving) the last floor it passed.
  get currentFloor() {
    const f = this.direction >= 0 ? Math.floor(this.position + EPS) : Math.ceil(this.position - EPS);
    return Math.min(Math.max(f, 0), this.floors - 1);
  }

  atFloor() {
    const r = Math.round(this.position);
    return Math.abs(this.position - r) < EPS ? r : null;
  }

  // The floor served next under the LOOK rule, or null.
  nextStop() {
    if (!this.pending.length) return null;
    const pos = this.position, d = this.direction;
    const nearest = (list, key) => list.reduce((best, f) => (key(f) < key(best) ? f : best));
    if (d !== 0) {
      const ahead = this.pending.filter((f) => (f - pos) * d > EPS);
      return nearest(ahead.length ? ahead : this.pending, (f) => Math.abs(f - pos));
    }
    return this.pending.reduce((best, f) => {
      const a = Math.abs(f - pos), b = Math.abs(best - pos);
      return a < b || (a === b && f < best) ? f : best;
    });
  }

  // Ask the car to stop at `floor`; false (and nothing changes) when it is pending or the car stands there.
  request(floor) {
    if (!(floor >= 0 && floor < this.floors)) throw new Error(`floor ${floor} is outside 0..${this.floors - 1}.`);
    if (this.pending.includes(floor) || (!this.moving && this.atFloor() === floor)) return false;
    this.pending.push(floor);
    this.emit("request", floor);
    return true;
  }

  // Advance by dt seconds; the events of that interval in time order.
  step(dt) {
    const start = this.log.length, end = this.t + dt;
    while (this.t < end - EPS) {
      const left = end - this.t;
      if (this.doorsOpen) {
        const used = Math.min(left, this.doorTimer);
        this.t += used;
        this.doorTimer -= used;
        if (this.doorTimer <= EPS) {
          this.doorsOpen = false;
          this.emit("doors_close", this.atFloor());
        }
        continue;
      }
      const target = this.nextStop();
      if (target === null) {
        this.direction = 0;
        this.t = end;
        break;
      }
      if (!this.moving) {
        this.moving = true;
        this.direction = target > this.position ? 1 : -1;
        this.emit("depart", this.currentFloor);
      }
      this.direction = target > this.position ? 1 : -1;
      const travel = Math.min(left, Math.abs(target - this.position) / this.speed);
      this.t += travel;
      this.position += this.direction * travel * this.speed;
      if (Math.abs(target - this.position) <= EPS * 10) {
        this.position = target;
        this.moving = false;
        this.pending.splice(this.pending.indexOf(target), 1);
        this.emit("arrive", target);
        this.doorsOpen = true;
        this.doorTimer = this.doorSeconds;
        this.emit("doors_open", target);
      }
    }
    this.t = Math.max(this.t, end);
    return this.log.slice(start);
  }

  emit(event, floor) {
    this.log.push({ t: Math.round(this.t * 1e4) / 1e4, event, floor: floor ?? this.currentFloor });
  }
}
