// Rebuilds service/console/static/vendor/ from the pinned packages in package-lock.json:
//   cd tools/vendor && npm ci && node vendor.mjs
// - Chart.js: its UMD build (which bundles @kurkle/color) and both licences, copied as they are.
// - The world map: world-atlas's countries-110m (Natural Earth 4.1.0) projected once, here, with
//   d3-geo's Equal Earth projection into SVG path strings (one per country, keyed by ISO 3166-1
//   numeric id), so the browser needs no map library and the page draws the map as inline SVG.
// - MANIFEST.json: every vendored package with its version, licence and npm integrity (sha512).
// The output is committed; nothing here runs when the service is installed.
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { geoContains, geoEqualEarth, geoPath } from "d3-geo";
import { feature } from "topojson-client";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "service", "console", "static", "vendor");
const modules = join(here, "node_modules");
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));

function pkg(name) {
  const meta = JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8"));
  const locked = lock.packages[`node_modules/${name}`];
  return {
    name,
    version: meta.version,
    license: meta.license,
    integrity: locked.integrity,
    tarball:
      locked.resolved ||
      `https://registry.npmjs.org/${name}/-/${name.split("/").pop()}-${meta.version}.tgz`,
    homepage: meta.homepage || null,
  };
}

rmSync(out, { recursive: true, force: true });
const manifest = { generated_by: "tools/vendor/vendor.mjs", packages: [] };

// Chart.js
const chart = pkg("chart.js");
const color = pkg("@kurkle/color");
const chartDir = join(out, `chart.js-${chart.version}`);
mkdirSync(chartDir, { recursive: true });
copyFileSync(join(modules, "chart.js/dist/chart.umd.min.js"), join(chartDir, "chart.umd.min.js"));
copyFileSync(join(modules, "chart.js/LICENSE.md"), join(chartDir, "LICENSE.md"));
copyFileSync(join(modules, "@kurkle/color/LICENSE.md"), join(chartDir, "LICENSE-kurkle-color.md"));
manifest.packages.push(
  { ...chart, files: [`chart.js-${chart.version}/chart.umd.min.js`, `chart.js-${chart.version}/LICENSE.md`], use: "served: the overview's charts" },
  { ...color, files: [`chart.js-${chart.version}/LICENSE-kurkle-color.md`], use: "bundled inside chart.umd.min.js" },
);

// The world map
const atlas = pkg("world-atlas");
const topo = JSON.parse(readFileSync(join(modules, "world-atlas/countries-110m.json"), "utf8"));
const countries = feature(topo, topo.objects.countries).features.filter(
  (f) => f.properties.name !== "Antarctica",
);
// Natural Earth 4.1 draws Crimea inside Russia; the service's places follow ISO 3166 (Crimea is
// UA-43, a subdivision of Ukraine: evidence/subdivision_names.py), and so does its map: the
// Russian polygon that holds Simferopol moves to Ukraine (checked below, the build stops if the
// atlas changes shape).
const simferopol = [34.1, 44.95];
const russia = countries.find((f) => f.id === "643");
const ukraine = countries.find((f) => f.id === "804");
const crimea = russia.geometry.coordinates.findIndex((polygon) =>
  geoContains({ type: "Polygon", coordinates: polygon }, simferopol),
);
if (crimea < 0 || ukraine.geometry.type !== "Polygon") throw new Error("the atlas changed: check Crimea");
ukraine.geometry = {
  type: "MultiPolygon",
  coordinates: [ukraine.geometry.coordinates, russia.geometry.coordinates[crimea]],
};
russia.geometry.coordinates.splice(crimea, 1);
const width = 960;
const projection = geoEqualEarth().fitWidth(width, { type: "FeatureCollection", features: countries });
const path = geoPath(projection).digits(1);
const [[, y0], [, y1]] = path.bounds({ type: "FeatureCollection", features: countries });
const height = Math.ceil(y1 + Math.max(0, -y0));
const shapes = countries
  .map((f) => ({ id: f.id ?? null, name: f.properties.name, d: path(f) }))
  .filter((s) => s.d)
  .sort((a, b) => a.name.localeCompare(b.name));
const crimeaIn = countries.filter((f) => geoContains(f, simferopol)).map((f) => f.properties.name);
const mapDir = join(out, `world-atlas-${atlas.version}`);
mkdirSync(mapDir, { recursive: true });
writeFileSync(
  join(mapDir, "countries-110m.svg-paths.json"),
  JSON.stringify({
    source: `world-atlas ${atlas.version} countries-110m.json (Natural Earth 4.1.0, 1:110m), Antarctica left out`,
    projection: "d3-geo geoEqualEarth, fitted to the width",
    viewBox: `0 0 ${width} ${height}`,
    crimea_drawn_in: crimeaIn,
    countries: shapes,
  }),
);
copyFileSync(join(modules, "world-atlas/LICENSE"), join(mapDir, "LICENSE"));
copyFileSync(join(modules, "d3-geo/LICENSE"), join(mapDir, "LICENSE-d3-geo"));
copyFileSync(join(modules, "topojson-client/LICENSE"), join(mapDir, "LICENSE-topojson-client"));
const geo = pkg("d3-geo");
const client = pkg("topojson-client");
const array = pkg("d3-array");
manifest.packages.push(
  { ...atlas, files: [`world-atlas-${atlas.version}/countries-110m.svg-paths.json`, `world-atlas-${atlas.version}/LICENSE`], use: "map data, projected at build time" },
  { ...geo, files: [`world-atlas-${atlas.version}/LICENSE-d3-geo`], use: "build time only: the projection" },
  { ...client, files: [`world-atlas-${atlas.version}/LICENSE-topojson-client`], use: "build time only: TopoJSON to GeoJSON" },
  { ...array, files: [], use: "build time only: a dependency of d3-geo" },
);
writeFileSync(join(out, "MANIFEST.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`${shapes.length} countries, viewBox 0 0 ${width} ${height}, Crimea drawn in: ${crimeaIn}`);
