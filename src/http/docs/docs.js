// The /docs page: fetch openapi.json (same origin) and render its operations
// grouped by tag, each with a "Try it" console that sends the request to
// this server. No framework and nothing from other hosts: the page must
// work where the service has no internet access. Every text from the
// document or an answer goes in with textContent, never as HTML.
"use strict";

(function () {
  const METHODS = ["get", "post", "put", "patch", "delete", "head", "options", "trace"];
  let spec = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // Descriptions use `code` spans; render those, leave the rest as text.
  function richText(tag, cls, text) {
    const node = el(tag, { class: cls });
    String(text || "").split("`").forEach((part, i) => {
      node.append(i % 2 ? el("code", {}, part) : document.createTextNode(part));
    });
    return node;
  }

  function resolve(schema) {
    let seen = 0;
    while (schema && schema.$ref && seen++ < 20) {
      const name = schema.$ref.replace("#/components/schemas/", "");
      schema = (spec.components && spec.components.schemas || {})[name];
    }
    return schema || {};
  }

  function refName(schema) {
    return schema && schema.$ref ? schema.$ref.replace("#/components/schemas/", "") : null;
  }

  function typeText(schema) {
    const name = refName(schema);
    if (name) return name;
    const s = schema || {};
    if (s.allOf || s.oneOf || s.anyOf) {
      const parts = (s.allOf || s.oneOf || s.anyOf).map(typeText);
      return parts.join(s.allOf ? " & " : " | ");
    }
    let t = Array.isArray(s.type) ? s.type.join(" | ") : (s.type || "any");
    if (t.startsWith("array") && s.items) t = t.replace("array", typeText(s.items) + "[]");
    if (s.enum) t += " (" + s.enum.filter((v) => v !== null).join(", ") + ")";
    if (s.format) t += " <" + s.format + ">";
    return t;
  }

  function constraints(s) {
    const bits = [];
    if (s.minimum !== undefined) bits.push("min " + s.minimum);
    if (s.maximum !== undefined) bits.push("max " + s.maximum);
    if (s.pattern) bits.push("pattern " + s.pattern);
    if (s.default !== undefined) bits.push("default " + JSON.stringify(s.default));
    return bits.length ? " [" + bits.join(", ") + "]" : "";
  }

  // Properties of an object schema, following $ref and allOf.
  function properties(schema, depth) {
    const s = resolve(schema);
    let props = [];
    let required = new Set(s.required || []);
    for (const part of s.allOf || []) {
      const sub = properties(part, depth);
      props = props.concat(sub.props);
      sub.required.forEach((r) => required.add(r));
    }
    for (const [name, p] of Object.entries(s.properties || {})) props.push([name, p]);
    return { props, required };
  }

  function schemaTree(schema, depth, seen) {
    const ul = el("ul");
    const name = refName(schema);
    if (depth > 6 || (name && seen.has(name))) return ul;
    const nextSeen = new Set(seen);
    if (name) nextSeen.add(name);
    const { props, required } = properties(schema, depth);
    for (const [prop, p] of props) {
      const target = resolve(p);
      const li = el("li", {},
        el("span", { class: "prop" }, prop),
        required.has(prop) ? el("span", { class: "req" }, "required") : null,
        el("span", { class: "type" }, typeText(p) + constraints(target)),
        p.description || target.description
          ? richText("span", "pdesc", p.description || target.description) : null);
      const inner = target.type === "array" || (Array.isArray(target.type) && target.type.includes("array"))
        ? target.items : p;
      if (inner && Object.keys(properties(inner, depth + 1).props).length) {
        li.append(schemaTree(inner, depth + 1, nextSeen));
      }
      ul.append(li);
    }
    return ul;
  }

  function schemaBlock(schema) {
    const box = el("div", { class: "schema" });
    box.append(el("div", {}, el("span", { class: "type" }, typeText(schema))));
    const tree = schemaTree(schema, 0, new Set());
    if (tree.childNodes.length) box.append(tree);
    const target = resolve(schema);
    const example = target.example !== undefined ? target.example : schema.example;
    if (example !== undefined) {
      box.append(el("pre", { class: "example" }, JSON.stringify(example, null, 2)));
    }
    return box;
  }

  function contentBlocks(content) {
    const out = [];
    for (const [type, media] of Object.entries(content || {})) {
      out.push(el("div", { class: "ct" }, type));
      if (media.schema) out.push(schemaBlock(media.schema));
      if (media.example !== undefined) {
        out.push(el("pre", { class: "example" }, JSON.stringify(media.example, null, 2)));
      }
    }
    return out;
  }

  function parametersTable(params) {
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "In"), el("th", {}, "Type"), el("th", {}, "Description"))));
    const body = el("tbody");
    for (const p of params) {
      body.append(el("tr", {},
        el("td", {}, el("span", { class: "prop" }, p.name), p.required ? el("span", { class: "req" }, "required") : null),
        el("td", {}, p.in),
        el("td", {}, el("span", { class: "type" }, typeText(p.schema) + constraints(resolve(p.schema)))),
        el("td", {}, richText("span", "", p.description))));
    }
    table.append(body);
    return table;
  }

  function securityText(op) {
    const reqs = op.security || spec.security || [];
    if (!reqs.length) return null;
    const names = reqs.map((r) => Object.keys(r).join(" + ") || "none");
    return "auth: " + names.join(" or ");
  }

  function operation(path, method, op) {
    const id = "op-" + (op.operationId || method + path).replace(/[^A-Za-z0-9_-]/g, "-");
    const details = el("details", { class: "op", id });
    const lock = securityText(op);
    details.append(el("summary", {},
      el("span", { class: "method m-" + method }, method.toUpperCase()),
      el("span", { class: "path" }, path),
      richText("span", "summary", op.summary),
      lock ? el("span", { class: "lock" }, lock) : null));
    const body = el("div", { class: "body" });
    if (op.description) body.append(richText("p", "desc", op.description));
    if (op.parameters && op.parameters.length) {
      body.append(el("h3", {}, "Parameters"), parametersTable(op.parameters));
    }
    if (op.requestBody) {
      body.append(el("h3", {}, "Request body" + (op.requestBody.required ? " (required)" : "")));
      if (op.requestBody.description) body.append(richText("p", "desc", op.requestBody.description));
      contentBlocks(op.requestBody.content).forEach((n) => body.append(n));
    }
    body.append(el("h3", {}, "Responses"));
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Description"))));
    const rows = el("tbody");
    for (const [status, resp] of Object.entries(op.responses || {})) {
      const cell = el("td", {}, richText("div", "", resp.description));
      const headers = Object.keys(resp.headers || {});
      if (headers.length) cell.append(el("div", { class: "hdrs" }, "Headers: " + headers.join(", ")));
      contentBlocks(resp.content).forEach((n) => cell.append(n));
      rows.append(el("tr", {}, el("td", { class: "status s" + status[0] }, status), cell));
    }
    table.append(rows);
    body.append(table);
    body.append(tryIt(path, method, op));
    details.append(body);
    return { details, id };
  }

  // The key the console sends, kept for this tab only (like the dashboard's).
  const KEY_STORE = "opscore.apiKey";

  function exampleBody(op) {
    const media = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
    if (!media) return null;
    if (media.example !== undefined) return media.example;
    const target = resolve(media.schema);
    if (target.example !== undefined) return target.example;
    if (media.schema && media.schema.example !== undefined) return media.schema.example;
    return {};
  }

  function streams(op) {
    return Object.values(op.responses || {}).some((r) => r.content && r.content["text/event-stream"]);
  }

  // "Try it": fill the parameters (and the JSON body), send the request to
  // this server with the key above, and show the answer. Same origin only.
  function tryIt(path, method, op) {
    const box = el("div", { class: "try" });
    box.append(el("h3", {}, "Try it"));
    if (streams(op)) {
      box.append(el("p", { class: "desc" }, "An event stream: follow it with `opscore watch` or the dashboard."));
      return box;
    }
    const form = el("form", { class: "tryform" });
    const inputs = [];
    for (const p of op.parameters || []) {
      if (!["path", "query", "header"].includes(p.in)) continue;
      const input = el("input", { name: p.name, "data-in": p.in, placeholder: typeText(p.schema) });
      if (p.required) input.required = true;
      inputs.push([p, input]);
      form.append(el("label", {}, el("span", { class: "prop" }, p.name + " (" + p.in + ")"), input));
    }
    let bodyArea = null;
    const example = exampleBody(op);
    if (example !== null) {
      bodyArea = el("textarea", { name: "body", rows: "8", spellcheck: "false" });
      bodyArea.value = JSON.stringify(example, null, 2);
      form.append(el("label", {}, el("span", { class: "prop" }, "body (JSON)"), bodyArea));
    }
    const send = el("button", { type: "submit" }, "Send");
    form.append(send);
    const result = el("div", { class: "tryresult", "aria-live": "polite" });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let url = path;
      const query = new URLSearchParams();
      const headers = { Accept: "application/json" };
      for (const [p, input] of inputs) {
        const v = input.value;
        if (v === "") continue;
        if (p.in === "path") url = url.replace("{" + p.name + "}", encodeURIComponent(v));
        else if (p.in === "query") query.append(p.name, v);
        else headers[p.name] = v;
      }
      const qs = query.toString();
      if (qs) url += "?" + qs;
      const key = document.getElementById("apikey").value.trim();
      if (key) headers.Authorization = "Bearer " + key;
      const init = { method: method.toUpperCase(), headers };
      if (bodyArea) {
        try { JSON.parse(bodyArea.value); } catch (e) {
          result.replaceChildren(el("p", { class: "tryerror" }, "The body is not JSON: " + e.message));
          return;
        }
        headers["Content-Type"] = "application/json";
        init.body = bodyArea.value;
      }
      // Relative to this page (/docs), so a server behind a path prefix works.
      const target = url.replace(/^\//, "");
      send.disabled = true;
      result.replaceChildren(el("p", {}, "Sending " + init.method + " " + url + " …"));
      try {
        const r = await fetch(target, init);
        const text = await r.text();
        let shown = text;
        try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
        result.replaceChildren(
          el("div", { class: "trystatus status s" + String(r.status)[0], "data-status": String(r.status) },
            r.status + " " + r.statusText),
          el("div", { class: "hdrs" }, "content-type: " + (r.headers.get("content-type") || "-")),
          el("pre", { class: "example tryout" }, shown));
      } catch (e) {
        result.replaceChildren(el("p", { class: "tryerror" }, "Request failed: " + e.message));
      } finally {
        send.disabled = false;
      }
    });
    box.append(form, result);
    return box;
  }

  function keyBar() {
    const input = el("input", { id: "apikey", type: "password", autocomplete: "off",
      placeholder: "API key for “Try it” (kept in this tab only)" });
    input.value = sessionStorage.getItem(KEY_STORE) || "";
    input.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, input.value.trim()));
    return el("div", { class: "keybar" }, el("label", { for: "apikey" }, "API key"), input);
  }

  function render() {
    const info = spec.info || {};
    document.title = (info.title || "API") + " documentation";
    document.getElementById("title").textContent = info.title || "API";
    document.getElementById("version").textContent =
      "version " + (info.version || "?") + " · OpenAPI " + spec.openapi;
    const main = document.getElementById("main");
    const nav = document.getElementById("nav");
    main.replaceChildren();
    if (info.description) main.append(richText("p", "intro", info.description));
    main.append(keyBar());

    // Tags in the document's order, then any not declared there.
    const groups = new Map((spec.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const tag = (op.tags && op.tags[0]) || "other";
        if (!groups.has(tag)) groups.set(tag, { tag: { name: tag }, ops: [] });
        groups.get(tag).ops.push([path, method, op]);
      }
    }
    for (const { tag, ops } of groups.values()) {
      if (!ops.length) continue;
      const section = el("section", { class: "tag", id: "tag-" + tag.name });
      section.append(el("h2", {}, tag.name));
      if (tag.description) section.append(richText("p", "tagdesc", tag.description));
      nav.append(el("h2", {}, tag.name));
      for (const [path, method, op] of ops) {
        const { details, id } = operation(path, method, op);
        section.append(details);
        const link = el("a", { href: "#" + id },
          el("span", { class: "method m-" + method }, method.toUpperCase()),
          el("span", { class: "mono" }, path));
        link.addEventListener("click", () => { details.open = true; });
        nav.append(link);
      }
      main.append(section);
    }
    if (location.hash) {
      const target = document.getElementById(location.hash.slice(1));
      if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
    }
  }

  fetch("openapi.json", { headers: { Accept: "application/json" } })
    .then((r) => {
      if (!r.ok) throw new Error("openapi.json answered " + r.status);
      return r.json();
    })
    .then((doc) => { spec = doc; render(); })
    .catch((e) => {
      document.getElementById("status").textContent = "Could not load openapi.json: " + e.message;
    });
})();
