/**
 * Bar charts drawn as SVG on the server: no script, no library, nothing fetched. Each chart has a
 * text alternative (title and summary) and the numbers it draws in a table beside it, since a
 * picture of bars is not readable by everyone.
 */

/** One bar: a day and its value. */
export interface ChartPoint {
  day: string;
  value: number;
}

const WIDTH = 720;
const HEIGHT = 220;
const PAD = { top: 16, right: 12, bottom: 34, left: 64 };

/** A round upper bound for the y axis: 1, 2 or 5 times a power of ten. */
function niceMax(max: number): number {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

/** A per-day bar chart with labelled axes and a data table. */
export function DailyBarChart(props: {
  id: string;
  title: string;
  points: ChartPoint[];
  /** How a value is written in labels and the table (a count, bytes…). */
  format: (value: number) => string;
}) {
  const { points } = props;
  const top = niceMax(Math.max(0, ...points.map((p) => p.value)));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotW / Math.max(1, points.length);
  const barW = Math.max(2, slot * 0.7);
  const total = points.reduce((sum, p) => sum + p.value, 0);
  const busiest = points.reduce<ChartPoint | undefined>(
    (best, p) => (!best || p.value > best.value ? p : best),
    undefined,
  );
  const labelEvery = Math.max(1, Math.ceil(points.length / 8));
  // The figures under the chart; its text alternative also says which days it covers.
  const figures = `Total ${props.format(total)}${
    busiest && busiest.value > 0 ? `; busiest day ${busiest.day} with ${props.format(busiest.value)}` : ""
  }.`;
  const summary =
    points.length === 0
      ? "No days in range."
      : `${points.length} days from ${points[0]?.day} to ${points.at(-1)?.day}. ${figures}`;
  // An empty chart reads like a broken one; say there is nothing instead.
  if (total === 0) return <p class="panel empty">{`${props.title}: nothing in this period.`}</p>;
  return (
    <figure style="margin:0">
      <svg
        class="chart"
        viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
        width={WIDTH}
        height={HEIGHT}
        role="img"
        aria-labelledby={`${props.id}-title ${props.id}-desc`}
      >
        <title id={`${props.id}-title`}>{props.title}</title>
        <desc id={`${props.id}-desc`}>{summary}</desc>
        {(top >= 2 ? [0, 0.5, 1] : [0, 1]).map((f) => {
          const y = PAD.top + plotH * (1 - f);
          return (
            <g>
              <line x1={PAD.left} x2={WIDTH - PAD.right} y1={y} y2={y} stroke="#cdd4de" stroke-width="1" />
              <text x={PAD.left - 6} y={y + 4} text-anchor="end" font-size="11" fill="#4a5563">
                {props.format(top * f)}
              </text>
            </g>
          );
        })}
        {points.map((p, i) => {
          const h = (p.value / top) * plotH;
          const x = PAD.left + i * slot + (slot - barW) / 2;
          return (
            <g>
              <rect
                x={x.toFixed(1)}
                y={(PAD.top + plotH - h).toFixed(1)}
                width={barW.toFixed(1)}
                height={h.toFixed(1)}
                fill="#0b57d0"
              >
                <title>
                  {p.day}: {props.format(p.value)}
                </title>
              </rect>
              {i % labelEvery === 0 ? (
                <text
                  x={(x + barW / 2).toFixed(1)}
                  y={HEIGHT - PAD.bottom + 16}
                  text-anchor="middle"
                  font-size="11"
                  fill="#4a5563"
                >
                  {p.day.slice(5)}
                </text>
              ) : null}
            </g>
          );
        })}
        <line x1={PAD.left} x2={WIDTH - PAD.right} y1={PAD.top + plotH} y2={PAD.top + plotH} stroke="#4a5563" />
      </svg>
      <figcaption>
        <strong>{props.title}.</strong> <span class="muted">{figures}</span>
      </figcaption>
    </figure>
  );
}

/** Every UTC day from `since` to `until` inclusive, as `YYYY-MM-DD`. */
export function daysBetween(since: string, until: string): string[] {
  const out: string[] = [];
  for (let t = Date.parse(`${since}T00:00:00Z`); t <= Date.parse(`${until}T00:00:00Z`); t += 86_400_000) {
    out.push(new Date(t).toISOString().slice(0, 10));
  }
  return out;
}
