/** A small top-down map of the camera's path, from the `path` messages the server sends with each chunk. */

const MAX_POINTS = 4000; // older points are thinned out (every other one dropped) beyond this
const MIN_SPAN = 2.0; // world units shown at least, so the first steps do not fill the map

export class MiniMap {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.points = [];
    this.heading = 0;
  }

  clear() {
    this.points = [];
    this.heading = 0;
    this.draw();
  }

  /** One chunk's path: {frame, points: [[x, z], ...], heading}; frame 0 starts a new stream. */
  add(path) {
    if (!path || !Array.isArray(path.points)) return;
    if (path.frame === 0) this.points = [];
    for (const p of path.points) if (Array.isArray(p) && p.every(Number.isFinite)) this.points.push(p);
    if (this.points.length > MAX_POINTS) this.points = this.points.filter((_, i) => i % 2 === 0);
    if (Number.isFinite(path.heading)) this.heading = path.heading;
    this.draw();
  }

  draw() {
    const { canvas, ctx, points } = this;
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    canvas.hidden = points.length === 0;
    if (!points.length) return;
    const xs = points.map((p) => p[0]);
    const zs = points.map((p) => p[1]);
    const [minX, maxX, minZ, maxZ] = [Math.min(...xs), Math.max(...xs), Math.min(...zs), Math.max(...zs)];
    const span = Math.max(MIN_SPAN, maxX - minX, maxZ - minZ) * 1.2;
    const scale = (Math.min(w, h) - 16) / span;
    const cx = (minX + maxX) / 2;
    const cz = (minZ + maxZ) / 2;
    // North (+z) is up, east (+x) is right.
    const at = (p) => [w / 2 + (p[0] - cx) * scale, h / 2 - (p[1] - cz) * scale];
    ctx.lineWidth = 2;
    ctx.strokeStyle = "rgba(95, 179, 255, 0.9)";
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(...at(p)) : ctx.moveTo(...at(p))));
    ctx.stroke();
    const [sx, sy] = at(points[0]);
    ctx.fillStyle = "rgba(230, 233, 238, 0.8)";
    ctx.fillRect(sx - 2, sy - 2, 4, 4);
    const [x, y] = at(points[points.length - 1]);
    const a = (this.heading * Math.PI) / 180;
    const dir = [Math.sin(a), -Math.cos(a)];
    ctx.fillStyle = "#58d68d";
    ctx.beginPath();
    ctx.moveTo(x + dir[0] * 9, y + dir[1] * 9);
    ctx.lineTo(x - dir[0] * 4 - dir[1] * 5, y - dir[1] * 4 + dir[0] * 5);
    ctx.lineTo(x - dir[0] * 4 + dir[1] * 5, y - dir[1] * 4 - dir[0] * 5);
    ctx.closePath();
    ctx.fill();
  }
}
