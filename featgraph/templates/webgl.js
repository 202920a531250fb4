// featgraph's WebGL renderer for large graphs: sigma.js 3 drawing a graphology graph, behind the small part of
// vis-network's API that the page script uses (DataSet: get, getIds, forEach, update, length; Network: on, once, fit,
// focus, redraw, setSize, selectNodes, unselectAll, getSelectedNodes, getConnectedNodes, getPositions, getScale,
// getViewPosition), plus highlight/clearHighlight (sigma reducers instead of per-item updates) and neighbours (the
// panel's strongest neighbours, read from the graph on demand). Positions are vis-network's (y down); sigma's graph
// holds y up, so every conversion flips y.
var featgraphWebGL = (function () {
  "use strict";

  function NodeSet(items) {
    this._items = items;
    this._byId = {};
    for (var i = 0; i < items.length; i++) this._byId[items[i].id] = items[i];
    this.length = items.length;
    this._listeners = [];
  }
  NodeSet.prototype.get = function (arg) {
    var self = this;
    if (arg === undefined) return this._items.slice();
    if (Array.isArray(arg)) return arg.map(function (id) { return self._byId[id]; }).filter(Boolean);
    if (arg !== null && typeof arg === "object") return arg.filter ? this._items.filter(arg.filter) : this._items.slice();
    return this._byId[arg] || null;
  };
  NodeSet.prototype.getIds = function (opts) { return this.get(opts || {}).map(function (n) { return n.id; }); };
  NodeSet.prototype.forEach = function (fn) { this._items.forEach(fn); };
  NodeSet.prototype.update = function (upd) {
    var list = Array.isArray(upd) ? upd : [upd], changed = [];
    for (var i = 0; i < list.length; i++) {
      var cur = this._byId[list[i].id];
      if (!cur) continue;
      for (var k in list[i]) if (k !== "id") cur[k] = list[i][k];
      changed.push(cur);
    }
    this._listeners.forEach(function (fn) { fn(changed); });
  };

  function EdgeSet(columns, ids) {
    // columns: {src: [node index], dst: [node index], w: [weight], measures: {name: [value]}}
    this._c = columns;
    this._ids = ids;
    this.length = columns.src.length;
  }
  EdgeSet.prototype._edge = function (k) {
    return {id: k, from: this._ids[this._c.src[k]], to: this._ids[this._c.dst[k]], value: this._c.w[k]};
  };
  EdgeSet.prototype.forEach = function (fn) { for (var k = 0; k < this.length; k++) fn(this._edge(k)); };
  EdgeSet.prototype.get = function (arg) {
    var out = [];
    for (var k = 0; k < this.length; k++) { var e = this._edge(k); if (!arg || !arg.filter || arg.filter(e)) out.push(e); }
    return out;
  };
  EdgeSet.prototype.getIds = function () { var out = []; for (var k = 0; k < this.length; k++) out.push(k); return out; };
  EdgeSet.prototype.update = function () { /* edges are styled by the renderer's reducers */ };

  function rgba(hex, alpha) {
    var m = /^#([0-9a-fA-F]{6})$/.exec(hex || "");
    if (!m) return "rgba(158,158,158," + alpha + ")";
    var v = parseInt(m[1], 16);
    return "rgba(" + (v >> 16) + "," + ((v >> 8) & 255) + "," + (v & 255) + "," + alpha + ")";
  }

  function Network(container, nodes, edges, options) {
    var self = this, ids = nodes.getIds();
    var graph = new graphology.Graph({type: options.directed ? "directed" : "undirected", multi: true, allowSelfLoops: true});
    var community = {}, color = {};
    nodes.forEach(function (n) {
      community[n.id] = n.community;
      color[n.id] = n.color;
      graph.addNode(n.id, {x: n.x, y: -n.y, size: n.size, color: n.color, label: n.name});
    });
    var c = edges._c, top = 0;
    for (var k = 0; k < c.w.length; k++) top = Math.max(top, Math.abs(c.w[k]) || 0);
    this._edgeAttrs = function (k) {
      var s = ids[c.src[k]], t = ids[c.dst[k]], inside = community[s] === community[t] && community[s] >= 0;
      return {k: k, color: inside ? rgba(color[s], options.inside_alpha) : rgba("#9e9e9e", options.between_alpha),
              size: 0.4 + 1.2 * (top > 0 ? Math.abs(c.w[k]) / top : 0.5)};
    };
    // Only the edges in c.drawn are drawn (a software-rendered WebGL draws ~50,000 lines a second); a selected
    // feature's other edges join while it is selected. Every edge stays in c for the panel and the neighbours.
    var drawn = c.drawn || c.src.map(function (_, i) { return i; });
    for (var d = 0; d < drawn.length; d++) {
      k = drawn[d];
      graph.addEdgeWithKey(String(k), ids[c.src[k]], ids[c.dst[k]], this._edgeAttrs(k));
    }
    this._index = {};
    for (var i = 0; i < ids.length; i++) this._index[ids[i]] = i;
    this._extra = [];
    this.graph = graph;
    this.nodes = nodes;
    this.edges = edges;
    this.drawsLabels = true;  // sigma places labels itself (a grid keeps them apart)
    this.body = {nodeIndices: ids, edgeIndices: {length: drawn.length}};
    var state = this._state = {keep: null, keepEdge: null, selected: null, hidden: {}};
    this.renderer = new Sigma(graph, container, {
      renderLabels: true, labelFont: "system-ui, sans-serif", labelSize: 12, labelWeight: "normal",
      labelRenderedSizeThreshold: options.label_threshold, labelDensity: 0.5, labelGridCellSize: 120,
      hideEdgesOnMove: drawn.length > 10000, defaultEdgeType: "line", zIndex: true, minCameraRatio: 0.002, maxCameraRatio: 4,
      zoomToSizeRatioFunction: function () { return 1; },  // nodes keep their size on screen: zooming in spreads them out
      nodeReducer: function (node, data) {
        var res = Object.assign({}, data);
        if (state.hidden[node]) res.hidden = true;
        if (state.keep && !state.keep[node]) { res.color = "#e8e8e8"; res.label = null; res.zIndex = 0; }
        else if (state.keep) { res.zIndex = 1; res.forceLabel = true; }
        if (node === state.selected) { res.highlighted = true; res.forceLabel = true; res.zIndex = 2; }
        return res;
      },
      edgeReducer: function (edge, data) {
        if (!state.keep) return data;
        var k = data.k, e = {id: k, from: ids[c.src[k]], to: ids[c.dst[k]]};
        if (!state.keepEdge(e)) return Object.assign({}, data, {hidden: true});
        return Object.assign({}, data, {color: data.color.replace(/,[0-9.]+\)$/, ",0.9)")});
      },
    });
    nodes._listeners.push(function (changed) { self._applyNodeChanges(changed); });
    this._handlers = {};
  }

  Network.prototype._applyNodeChanges = function (changed) {
    var graph = this.graph, state = this._state;
    changed.forEach(function (n) {
      state.hidden[n.id] = !!n.hidden;
      graph.mergeNodeAttributes(n.id, {x: n.x, y: -n.y});
    });
    this.renderer.refresh();
  };
  Network.prototype.on = function (event, fn) {
    var r = this.renderer, self = this;
    if (event === "afterDrawing") r.on("afterRender", function () { fn(null); });
    else if (event === "click") {
      r.on("clickNode", function (e) { fn({nodes: [e.node], edges: []}); });
      r.on("clickStage", function () { fn({nodes: [], edges: []}); });
    } else if (event === "dragStart") r.getMouseCaptor().on("mousedown", function () { fn({}); });
    else if (event === "zoom") r.getMouseCaptor().on("wheel", function () { fn({}); });
    (self._handlers[event] = self._handlers[event] || []).push(fn);
  };
  Network.prototype.once = function () { /* no physics: nothing stabilises */ };
  Network.prototype._draw = function () {
    // draw once the current task's changes are in (a microtask: no animation frame needed, so a background or
    // headless tab draws too; fit then redraw costs one frame), without re-running the reducers over every item
    var self = this;
    if (this._pending) return;
    this._pending = true;
    Promise.resolve().then(function () {
      self._pending = false;
      self.renderer.refresh({partialGraph: {nodes: [], edges: []}, skipIndexation: true});
    });
  };
  Network.prototype.redraw = function () { this._draw(); };
  Network.prototype.setSize = function () { this.renderer.resize(); this._draw(); };
  Network.prototype.selectNodes = function (list) { this._state.selected = list.length ? list[0] : null; this.renderer.refresh(); };
  Network.prototype.unselectAll = function () { this._state.selected = null; this.renderer.refresh(); };
  Network.prototype.getSelectedNodes = function () { return this._state.selected === null ? [] : [this._state.selected]; };
  Network.prototype._incident = function (id) {
    // every edge of node id (indices into the columns), drawn or not
    var c = this.edges._c, i = this._index[id], out = [];
    if (i === undefined) return out;
    for (var k = 0; k < c.src.length; k++) if (c.src[k] === i || c.dst[k] === i) out.push(k);
    return out;
  };
  Network.prototype.getConnectedNodes = function (id) {
    var c = this.edges._c, ids = this.body.nodeIndices, i = this._index[id], seen = {}, out = [];
    this._incident(id).forEach(function (k) {
      var o = c.src[k] === i ? c.dst[k] : c.src[k];
      if (o !== i && !seen[o]) { seen[o] = true; out.push(ids[o]); }
    });
    return out;
  };
  Network.prototype.getPositions = function (list) {
    var out = {}, graph = this.graph;
    (list || this.body.nodeIndices).forEach(function (id) {
      if (graph.hasNode(id)) { var a = graph.getNodeAttributes(id); out[id] = {x: a.x, y: -a.y}; }
    });
    return out;
  };
  Network.prototype._size = function () { var d = this.renderer.getDimensions(); return {w: d.width, h: d.height}; };
  Network.prototype.getScale = function () {
    // screen pixels per graph unit
    var a = this.renderer.graphToViewport({x: 0, y: 0}), b = this.renderer.graphToViewport({x: 1, y: 0});
    return Math.hypot(b.x - a.x, b.y - a.y);
  };
  Network.prototype.getViewPosition = function () {
    var s = this._size(), g = this.renderer.viewportToGraph({x: s.w / 2, y: s.h / 2});
    return {x: g.x, y: -g.y};
  };
  Network.prototype.focus = function (id, opts) {
    var d = this.renderer.getNodeDisplayData(id);
    if (!d) return;
    var camera = this.renderer.getCamera(), scale = (opts && opts.scale) || this.getScale();
    var ratio = camera.ratio * this.getScale() / scale;
    var target = {x: d.x, y: d.y, ratio: ratio, angle: camera.angle};
    if (opts && opts.animation) camera.animate(target, {duration: opts.animation.duration || 400});
    else { camera.setState(target); this._draw(); }
  };
  Network.prototype.fit = function (opts) {
    var r = this.renderer, camera = r.getCamera();
    if (!opts || !opts.nodes) { camera.setState({x: 0.5, y: 0.5, ratio: 1, angle: 0}); this._draw(); return; }
    var xs = [], ys = [];
    opts.nodes.forEach(function (id) { var d = r.getNodeDisplayData(id); if (d) { xs.push(d.x); ys.push(d.y); } });
    if (!xs.length) return;
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    camera.setState({x: (x0 + x1) / 2, y: (y0 + y1) / 2, ratio: Math.max(x1 - x0, y1 - y0, 0.01) * 1.2, angle: 0});
    // then correct the zoom so the box fills 90 % of the viewport's tighter side
    var s = this._size(), a = r.framedGraphToViewport({x: x0, y: y0}), b = r.framedGraphToViewport({x: x1, y: y1});
    var need = Math.max(Math.abs(b.x - a.x) / (0.9 * s.w), Math.abs(b.y - a.y) / (0.9 * s.h), 1e-6);
    camera.setState({x: (x0 + x1) / 2, y: (y0 + y1) / 2, ratio: camera.ratio * need, angle: 0});
    this._draw();
  };
  Network.prototype._dropExtra = function () {
    var graph = this.graph;
    this._extra.forEach(function (key) { if (graph.hasEdge(key)) graph.dropEdge(key); });
    this._extra = [];
  };
  Network.prototype.highlight = function (keep, keepEdge) {
    // dims all but keep; a selected feature's edges that are not drawn join the drawing until the selection ends
    var graph = this.graph, c = this.edges._c, ids = this.body.nodeIndices, self = this;
    this._dropExtra();
    if (this._state.selected !== null) {
      this._incident(this._state.selected).forEach(function (k) {
        var key = String(k);
        if (!graph.hasEdge(key) && keepEdge({from: ids[c.src[k]], to: ids[c.dst[k]]})) {
          graph.addEdgeWithKey(key, ids[c.src[k]], ids[c.dst[k]], self._edgeAttrs(k));
          self._extra.push(key);
        }
      });
    }
    this._state.keep = keep; this._state.keepEdge = keepEdge; this.renderer.refresh();
  };
  Network.prototype.clearHighlight = function () {
    this._dropExtra();
    this._state.keep = null; this._state.keepEdge = null; this.renderer.refresh();
  };
  Network.prototype.neighbours = function (id, k) {
    // the k strongest neighbours by |weight|, each {id, m: {measure: value}, dir}, as the vis page carries them
    var c = this.edges._c, ids = this.body.nodeIndices, i = this._index[id], directed = this.graph.type === "directed", rows = [];
    this._incident(id).forEach(function (e) {
      var o = c.src[e] === i ? c.dst[e] : c.src[e];
      if (o !== i) rows.push({k: e, other: ids[o], out: c.src[e] === i});
    });
    rows.sort(function (a, b) { return (Math.abs(c.w[b.k]) - Math.abs(c.w[a.k])) || (a.k - b.k); });
    return rows.slice(0, k || 8).map(function (r) {
      var m = {};
      Object.keys(c.measures).forEach(function (name) { m[name] = c.measures[name][r.k]; });
      var out = {id: r.other, m: m};
      if (directed) out.dir = r.out ? "out" : "in";
      return out;
    });
  };

  return {NodeSet: NodeSet, EdgeSet: EdgeSet, Network: Network};
})();
