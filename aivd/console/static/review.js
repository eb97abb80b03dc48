// The review page: works through /api/review/queue one image at a time, keyboard first. An image the machine got
// right takes one key (a); a good image one key (g). Each save is one POST /api/reviews, which stores the review
// beside the machine's records (never over them) and audits it.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

class Reviewer {
  constructor(root) {
    this.root = root;
    this.csrf = root.dataset.csrf;
    this.run = root.dataset.run;
    this.classes = [];
    this.classesOfRun = new Map();  // run id -> the classes a review of it may name (the number keys)
    this.classList = root.querySelector("#review-classes");
    this.status = root.querySelector("#review-status");
    this.picture = root.querySelector("#review-picture");
    this.table = root.querySelector("#review-boxes");
    this.reasons = root.querySelector("#review-reasons");
    this.queue = [];
    this.skipped = new Set();
    this.image = null;
    this.boxes = [];
    this.selected = -1;
    this.edited = false;
    this.busy = false;
    document.addEventListener("keydown", (event) => this.key(event));
  }

  say(text) { this.status.textContent = text; }

  async next() {
    this.queue = this.queue.filter((item) => !this.skipped.has(item.image_row_id));
    if (!this.queue.length) {
      const query = new URLSearchParams({ limit: "50" });
      if (this.run) query.set("run_id", this.run);
      const answer = await fetch(`/api/review/queue?${query}`, { credentials: "same-origin" });
      if (!answer.ok) return this.say(`Cannot read the queue: ${answer.status}`);
      this.queue = (await answer.json()).filter((item) => !this.skipped.has(item.image_row_id));
    }
    if (!this.queue.length) {
      this.image = null;
      this.picture.replaceChildren();
      this.table.replaceChildren();
      return this.say("Nothing left to review.");
    }
    const item = this.queue.shift();
    const answer = await fetch(`/api/images/${item.image_row_id}`, { credentials: "same-origin" });
    if (!answer.ok) return this.say(`Cannot read image ${item.image_row_id}: ${answer.status}`);
    this.image = await answer.json();
    await this.loadClasses(this.image.run_id);
    this.boxes = this.image.defects.filter((d) => !d.rejected)
      .map((d) => ({ bbox: d.bbox.slice(), defect_type: d.defect_type, defect_id: d.id, from: d.source }));
    this.selected = -1;
    this.edited = false;
    this.reasons.textContent = `priority ${item.priority.toFixed(2)}: ${item.reasons.join(", ")}`;
    this.draw();
    this.say(`Image ${this.image.id} (${this.image.image_id}): ${this.boxes.length} boxes`);
  }

  async loadClasses(run) {
    if (!this.classesOfRun.has(run)) {
      const answer = await fetch(`/api/classes?run_id=${run}`, { credentials: "same-origin" });
      this.classesOfRun.set(run, answer.ok ? await answer.json() : []);
    }
    this.classes = this.classesOfRun.get(run);
    this.classList.replaceChildren(...this.classes.slice(0, 9).map((name, index) => {
      const item = document.createElement("span");
      item.textContent = `${index + 1} ${name}`;
      return item;
    }));
  }

  draw() {
    const { width, height, id } = this.image;
    if (!this.svg) {
      this.img = document.createElement("img");
      this.svg = document.createElementNS(SVG, "svg");
      this.svg.id = "review-svg";
      this.svg.setAttribute("preserveAspectRatio", "none");
      this.svg.addEventListener("mousedown", (event) => this.startDrag(event));
      this.picture.replaceChildren(this.img, this.svg);
    }
    if (this.img.dataset.id !== String(id)) {
      this.img.dataset.id = String(id);
      this.img.src = `/api/images/${id}/file`;
      this.img.width = width || 0;
      this.img.height = height || 0;
      this.img.alt = this.image.image_id;
    }
    this.svg.setAttribute("viewBox", `0 0 ${width || 1} ${height || 1}`);
    this.svg.replaceChildren(...this.boxes.flatMap((box, index) => {
      const rect = document.createElementNS(SVG, "rect");
      const [x1, y1, x2, y2] = box.bbox;
      Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1 }).forEach(([k, v]) => rect.setAttribute(k, v));
      rect.setAttribute("class", `box human${index === this.selected ? " selected" : ""}`);
      rect.dataset.index = String(index);
      const label = document.createElementNS(SVG, "text");  // the number the table and Tab go by, and the class
      label.setAttribute("x", x1);
      label.setAttribute("y", Math.max(12, y1 - 3));
      label.textContent = `${index + 1} ${box.defect_type}`;
      return [rect, label];
    }));
    this.table.replaceChildren(...this.boxes.map((box, index) => {
      const row = document.createElement("tr");
      if (index === this.selected) row.className = "selected";
      for (const text of [index + 1, box.defect_type, box.defect_id === null ? "added" : box.from]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
  }

  point(event) {
    const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    return [Math.max(0, Math.min(this.image.width, p.x)), Math.max(0, Math.min(this.image.height, p.y))];
  }

  startDrag(event) {
    if (!this.image || event.button !== 0) return;
    event.preventDefault();
    const start = this.point(event);
    const ghost = document.createElementNS(SVG, "rect");
    ghost.setAttribute("class", "box selected");
    this.svg.append(ghost);
    const box = (end) => [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
    const move = (e) => {
      const [x1, y1, x2, y2] = box(this.point(e));
      Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1 }).forEach(([k, v]) => ghost.setAttribute(k, v));
    };
    const up = (e) => {
      window.removeEventListener("mousemove", move);
      window.removeEventListener("mouseup", up);
      const drawn = box(this.point(e));
      if (drawn[2] - drawn[0] < 2 || drawn[3] - drawn[1] < 2) {  // a click: select the box under it
        const index = e.target.dataset ? e.target.dataset.index : undefined;
        this.selected = index === undefined ? -1 : Number(index);
      } else if (this.selected >= 0) {
        this.boxes[this.selected].bbox = drawn;
        this.edited = true;
      } else {
        this.boxes.push({ bbox: drawn, defect_type: this.classes[0] || "defect", defect_id: null, from: "added" });
        this.selected = this.boxes.length - 1;
        this.edited = true;
      }
      this.draw();
    };
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
  }

  async save(verdict) {
    if (!this.image || this.busy) return;
    this.busy = true;
    const labels = verdict === "good" ? [] : this.boxes.map(({ bbox, defect_type, defect_id }) => ({ bbox, defect_type, defect_id }));
    try {
      const answer = await fetch("/api/reviews", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": this.csrf },
        body: JSON.stringify({ image_row_id: this.image.id, verdict, labels }),
      });
      if (!answer.ok) {
        const body = await answer.json().catch(() => ({}));
        return this.say(`Not saved (${answer.status}): ${JSON.stringify(body.detail || body)}`);
      }
      const saved = this.image.id;
      await this.next();
      this.say(`Saved image ${saved} as ${verdict}. ${this.status.textContent}`);
    } finally {
      this.busy = false;
    }
  }

  key(event) {
    if (!this.image || event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "a" || key === "Enter") this.save(this.edited ? "corrected" : "accepted");
    else if (key === "g") this.save("good");
    else if (key === "s") { this.skipped.add(this.image.id); this.next(); }
    else if (key === "Tab") {
      if (!this.boxes.length) return;
      const step = event.shiftKey ? -1 : 1;
      this.selected = (this.selected + step + this.boxes.length) % this.boxes.length;
      this.draw();
    } else if (key === "Escape") { this.selected = -1; this.draw(); }
    else if ((key === "Delete" || key === "Backspace" || key === "d") && this.selected >= 0) {
      this.boxes.splice(this.selected, 1);
      this.selected = -1;
      this.edited = true;
      this.draw();
    } else if (/^[1-9]$/.test(key) && Number(key) <= this.classes.length) {
      if (this.selected < 0 && this.boxes.length === 1) this.selected = 0;
      if (this.selected < 0) return this.say("Select a box first (Tab or click).");
      this.boxes[this.selected].defect_type = this.classes[Number(key) - 1];
      this.edited = true;
      this.draw();
    } else return;
    event.preventDefault();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("review");
  if (root) new Reviewer(root).next();
});
