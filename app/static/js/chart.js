// A small live line chart of the Gatys loss terms on a <canvas> (log scale: the terms span decades).

export const SERIES = [
  { key: 'content', label: 'content', color: '#1f5fbf' },
  { key: 'style', label: 'style', color: '#b3470f' },
  { key: 'tv', label: 'total variation', color: '#1b7a3a' },
];

export class LossChart {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.legend = legend;
    this.points = [];
    this.totalSteps = 1;
    legend.replaceChildren(...SERIES.map((s) => {
      const item = document.createElement('span');
      item.style.setProperty('--swatch', s.color);
      item.textContent = s.label;
      return item;
    }));
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** Show a curve saved earlier (a job reopened after a reload). */
  restore(points, totalSteps) {
    this.points = Array.isArray(points) ? points.filter((p) => Number.isFinite(p?.step)) : [];
    this.totalSteps = Math.max(1, totalSteps || 1);
    this.draw();
  }

  /** Add the losses reported at `step` (ignored if that step is already plotted). */
  add(step, losses, totalSteps) {
    if (totalSteps) this.totalSteps = Math.max(1, totalSteps);
    if (!losses || !Object.keys(losses).length) return;
    const last = this.points[this.points.length - 1];
    if (last && last.step === step) return;
    this.points.push({ step, ...losses });
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || canvas.width;
    const cssHeight = Math.round(cssWidth * 0.375);
    if (canvas.width !== Math.round(cssWidth * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const pad = { left: 48, right: 12, top: 12, bottom: 28 };
    const w = cssWidth - pad.left - pad.right;
    const h = cssHeight - pad.top - pad.bottom;
    ctx.font = '12px system-ui, sans-serif';
    ctx.fillStyle = '#57524c';
    ctx.strokeStyle = '#e4e0da';
    ctx.lineWidth = 1;

    const values = this.points.flatMap((p) => SERIES.map((s) => p[s.key])).filter((v) => v > 0);
    if (!values.length) {
      ctx.fillText('The loss curves appear once the job reports its first steps.', pad.left, pad.top + h / 2);
      this.canvas.setAttribute('aria-label', 'No loss values yet');
      return;
    }
    let lo = Math.floor(Math.log10(Math.min(...values)));
    let hi = Math.ceil(Math.log10(Math.max(...values)));
    if (hi === lo) { hi += 1; lo -= 1; }
    const x = (step) => pad.left + (step / this.totalSteps) * w;
    const y = (v) => pad.top + (1 - (Math.log10(v) - lo) / (hi - lo)) * h;

    for (let e = lo; e <= hi; e += 1) {  // one grid line per decade
      ctx.beginPath();
      ctx.moveTo(pad.left, y(10 ** e));
      ctx.lineTo(pad.left + w, y(10 ** e));
      ctx.stroke();
      ctx.fillText(`1e${e}`, 4, y(10 ** e) + 4);
    }
    ctx.fillText('0', pad.left, cssHeight - 8);
    const endLabel = `step ${this.totalSteps}`;
    ctx.fillText(endLabel, pad.left + w - ctx.measureText(endLabel).width, cssHeight - 8);

    for (const series of SERIES) {
      const pts = this.points.filter((p) => p[series.key] > 0);
      if (!pts.length) continue;
      ctx.strokeStyle = series.color;
      ctx.fillStyle = series.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(x(p.step), y(p[series.key])) : ctx.moveTo(x(p.step), y(p[series.key]))));
      ctx.stroke();
      const tail = pts[pts.length - 1];
      ctx.beginPath();
      ctx.arc(x(tail.step), y(tail[series.key]), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
    const latest = this.points[this.points.length - 1];
    this.canvas.setAttribute('aria-label', `Losses at step ${latest.step}: ${SERIES
      .filter((s) => latest[s.key] !== undefined)
      .map((s) => `${s.label} ${Number(latest[s.key]).toPrecision(3)}`).join(', ')}`);
  }
}
