// Open a geo-sim report.html in Debian's Chromium and print, as one JSON line, what
// every chart drew and any request the page made beyond its own file (it must make
// none: the report is self-contained).
import { chromium } from "playwright-core";

const file = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  const fetched = [];
  page.on("request", (r) => {
    if (!r.url().startsWith("file:")) fetched.push(r.url());
  });
  await page.goto("file://" + file, { waitUntil: "load" });
  const charts = await page.$$eval("figure.chart", (figures) =>
    figures.map((f) => {
      const svg = f.querySelector("svg");
      if (!svg) return { kind: f.dataset.chart, width: 0, height: 0, marks: 0, series: 0 };
      const box = svg.getBoundingClientRect();
      // Lines, curves and shapes actually laid out with a size.
      const marks = [...svg.querySelectorAll("polyline, path, line, rect, circle")].filter((e) => {
        const b = e.getBBox();
        return b.width > 0 || b.height > 0;
      }).length;
      // Data series: the report draws them as polylines 2 wide (axes and grid are 1).
      const series = [...svg.querySelectorAll('polyline[stroke-width="2"]')].filter((p) => {
        const b = p.getBBox();
        return p.points.numberOfItems >= 2 && (b.width > 0 || b.height > 0);
      }).length;
      return { kind: f.dataset.chart, width: box.width, height: box.height, marks, series };
    }),
  );
  console.log(JSON.stringify({ charts, fetched, title: await page.title() }));
} finally {
  await browser.close();
}
