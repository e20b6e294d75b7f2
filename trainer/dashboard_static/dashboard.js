/* geolabel coordinators' dashboard: the map and the page's own refresh.
 *
 * Every REFRESH seconds the page fetches dashboard/data.json and swaps in its sections (status,
 * rasters, rounds), updates the tiles on the map in place (the map keeps its pan and zoom) and
 * reloads the plots. Imagery: one tile layer per raster, rendered by the app from the source raster.
 * Tiles: translucent fills and outlines, so overlapping tiles stay readable; a click opens a popup
 * with the link to the tile's Label Studio task. Leaflet comes from this app (no CDN).
 */
(function () {
  "use strict";

  const REFRESH = Number(document.body.dataset.refresh || "30") * 1000;
  const SECTIONS = { rounds: "rounds-section", throughput: "throughput-section" }; // element ids
  const ZOOM_OUT = 3; // imagery shown from 3 zoom levels above the raster's coarsest own level
  // minZoom 0: the imagery layers' own minimum must not stop the map from zooming out to every raster.
  const map = L.map("map", { attributionControl: false, minZoom: 0, maxZoom: 24, zoomSnap: 0.5 });
  map.setView([0, 0], 2);
  const imagery = L.layerGroup().addTo(map);
  const outlines = L.featureGroup().addTo(map);
  L.control.layers(null, { imagery: imagery, tiles: outlines }, { collapsed: false }).addTo(map);
  L.control.scale({ imperial: false }).addTo(map);

  const tileLayers = new Map(); // raster id -> L.TileLayer
  const polygons = new Map(); // tile id -> L.Polygon
  const rasterNames = new Map(); // raster id -> name
  const footprints = new Map(); // raster id -> its footprint as Leaflet bounds
  const state = { map: map, tiles: polygons, rasters: tileLayers, refreshes: 0, fitted: false };
  window.geolabelDashboard = state;

  function latLngs(footprint) {
    return footprint.map(function (p) { return [p[1], p[0]]; }); // [lon, lat] -> Leaflet's [lat, lon]
  }

  function style(tile) {
    const unlabelled = tile.state === "unlabelled";
    return {
      color: tile.next_batch ? "#00bfff" : tile.colour,
      weight: tile.next_batch ? 2.5 : 1.5,
      dashArray: tile.next_batch ? "6 4" : null,
      fillColor: tile.colour,
      fillOpacity: unlabelled && tile.uncertainty === null ? 0.05 : 0.25,
      opacity: 0.9,
    };
  }

  function popup(tile) {
    const box = document.createElement("div");
    const lines = [
      "tile " + tile.id,
      "raster " + (rasterNames.get(tile.raster) || tile.raster),
      "state: " + tile.state + (tile.next_batch ? " (next batch)" : ""),
    ];
    if (tile.uncertainty !== null) lines.push("uncertainty: " + tile.uncertainty.toFixed(3));
    lines.forEach(function (text) {
      const line = document.createElement("div");
      line.textContent = text;
      box.appendChild(line);
    });
    if (tile.task_url) {
      const link = document.createElement("a");
      link.href = tile.task_url;
      link.target = "_blank";
      link.rel = "noopener";
      link.className = "task-link";
      link.textContent = "open task " + tile.task + " in Label Studio";
      box.appendChild(link);
    } else {
      const none = document.createElement("div");
      none.textContent = "no Label Studio task (every pixel is nodata)";
      box.appendChild(none);
    }
    return box;
  }

  function updateRasters(rasters) {
    const seen = new Set();
    rasters.forEach(function (raster) {
      rasterNames.set(raster.id, raster.name);
      if (raster.footprint) footprints.set(raster.id, L.latLngBounds(latLngs(raster.footprint)));
      if (!raster.imagery || !raster.footprint) return;
      seen.add(raster.id);
      if (tileLayers.has(raster.id)) return;
      const layer = L.tileLayer(raster.imagery.url, {
        bounds: L.latLngBounds(latLngs(raster.footprint)),
        // Below minzoom the layer hides: Leaflet would otherwise fetch minNativeZoom tiles for the
        // whole view (millions at a world view). Tiles a little coarser than minzoom are rendered.
        minZoom: Math.max(0, raster.imagery.minzoom - ZOOM_OUT),
        maxNativeZoom: raster.imagery.maxzoom,
        maxZoom: 24,
        tileSize: 256,
      });
      layer.addTo(imagery);
      tileLayers.set(raster.id, layer);
    });
    Array.from(tileLayers.keys()).forEach(function (id) {
      if (!seen.has(id)) {
        imagery.removeLayer(tileLayers.get(id));
        tileLayers.delete(id);
      }
    });
  }

  function updateTiles(tiles) {
    const seen = new Set();
    tiles.forEach(function (tile) {
      seen.add(tile.id);
      let polygon = polygons.get(tile.id);
      if (polygon === undefined) {
        polygon = L.polygon(latLngs(tile.footprint), style(tile));
        polygon.on("mouseover", function () { polygon.setStyle({ weight: 4 }); polygon.bringToFront(); });
        polygon.on("mouseout", function () { polygon.setStyle(style(polygon.tile)); });
        polygon.bindPopup(function () { return popup(polygon.tile); });
        polygon.addTo(outlines);
        polygons.set(tile.id, polygon);
      } else {
        polygon.setStyle(style(tile));
      }
      polygon.tile = tile;
    });
    Array.from(polygons.keys()).forEach(function (id) {
      if (!seen.has(id)) {
        outlines.removeLayer(polygons.get(id));
        polygons.delete(id);
      }
    });
  }

  function fitOnce(rasters) {
    if (state.fitted) return;
    const corners = [];
    rasters.forEach(function (raster) {
      if (raster.footprint) latLngs(raster.footprint).forEach(function (p) { corners.push(p); });
    });
    if (corners.length) {
      map.fitBounds(L.latLngBounds(corners), { padding: [20, 20] });
      state.fitted = true;
    }
  }

  function update(data) {
    Object.keys(data.sections).forEach(function (name) {
      const target = document.getElementById(SECTIONS[name] || name);
      if (target) target.innerHTML = data.sections[name];
    });
    fitOnce(data.rasters);
    updateRasters(data.rasters);
    updateTiles(data.tiles);
    document.querySelectorAll(".plots img").forEach(function (image) {
      image.src = image.src.split("?")[0] + "?t=" + encodeURIComponent(data.generated);
    });
  }

  function say(text, failed) {
    const line = document.getElementById("updated");
    line.textContent = text;
    line.className = failed ? "failed" : "";
  }

  async function refresh() {
    try {
      const response = await fetch("dashboard/data.json", { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error("the server answered " + response.status);
      const data = await response.json();
      update(data);
      state.refreshes += 1;
      say("updated " + data.generated + "; refreshes every " + REFRESH / 1000 + " s", false);
    } catch (error) {
      say("refresh failed (" + error.message + "); trying again in " + REFRESH / 1000 + " s", true);
    } finally {
      state.timer = window.setTimeout(refresh, REFRESH);
    }
  }

  // A click on a raster's row of the table zooms the map to it.
  state.zoomTo = function (id) {
    const bounds = footprints.get(id);
    if (bounds) map.fitBounds(bounds, { padding: [10, 10] });
  };
  document.getElementById("rasters").addEventListener("click", function (event) {
    const row = event.target.closest("tr[data-raster]");
    if (row) state.zoomTo(Number(row.dataset.raster));
  });

  state.refresh = function () {
    window.clearTimeout(state.timer);
    return refresh();
  };
  refresh();
})();
