// Upload page: patient lookup through QIDO-RS, one POST per file, a line per file with its outcome.
(function () {
  "use strict";
  const root = document.body.dataset.dicomwebRoot;
  const $ = (id) => document.getElementById(id);
  const results = $("results");
  let queue = Promise.resolve();

  function text(item, tag) {
    const el = item[tag];
    if (!el || !el.Value || !el.Value.length) return "";
    const v = el.Value[0];
    return typeof v === "object" ? (v.Alphabetic || "") : String(v);
  }

  let lookups = 0;

  async function findPatient() {
    const id = $("patient-id").value.trim();
    const select = $("study");
    const mine = ++lookups;  // a later lookup (change + click) wins; earlier answers are dropped
    select.length = 1;
    $("about").length = 1;
    $("patient-found").textContent = "";
    if (!id) return;
    const url = root + "/studies?PatientID=" + encodeURIComponent(id) +
      "&includefield=PatientName&includefield=StudyDescription&includefield=StudyDate";
    try {
      const r = await fetch(url, { headers: { Accept: "application/dicom+json" } });
      const studies = r.status === 200 ? await r.json() : [];
      if (mine !== lookups) return;
      select.length = 1;
      $("about").length = 1;
      if (!studies.length) {
        $("patient-found").textContent = "No patient with this ID yet: enter the name to add them.";
        $("new-patient").hidden = false;
        return;
      }
      $("patient-found").textContent = "Found: " + text(studies[0], "00100010") +
        " (" + studies.length + " stud" + (studies.length === 1 ? "y" : "ies") + ")";
      $("new-patient").hidden = true;
      for (const s of studies) {
        const opt = document.createElement("option");
        opt.value = text(s, "0020000D");
        opt.textContent = (text(s, "00080020") || "no date") + " " + (text(s, "00081030") || opt.value);
        select.appendChild(opt);
        $("about").appendChild(opt.cloneNode(true));
      }
    } catch (e) {
      $("patient-found").textContent = "Search failed: " + e;
    }
  }

  function line(name) {
    const li = document.createElement("li");
    li.className = "sending";
    li.textContent = name + ": sending...";
    results.appendChild(li);
    return li;
  }

  async function send(file) {
    const li = line(file.name);
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("patient_id", $("patient-id").value.trim());
    form.append("patient_name", $("patient-name").value.trim());
    form.append("birth_date", $("birth-date").value.trim());
    const study = $("study").value;
    if (study) form.append("study_uid", study); else form.append("description", $("description").value.trim());
    if ($("about").value) form.append("about", $("about").value);
    try {
      const r = await fetch("files", { method: "POST", body: form, headers: { "X-PACS-Upload": "1" } });
      let body = {};
      try { body = await r.json(); } catch (e) { body = { error: "HTTP " + r.status }; }
      if (r.ok) {
        li.className = "stored";
        li.textContent = file.name + ": " + body.status +
          (body.pages ? " (" + body.pages.length + " pages)" : "");
        li.dataset.sopInstanceUid = body.sop_instance_uid;
        li.dataset.studyUid = body.study_uid;
        if (!study && body.study_uid) {  // the next files go into the study just made
          const opt = document.createElement("option");
          opt.value = body.study_uid;
          opt.textContent = ($("description").value.trim() || "new study") + " (just made)";
          $("study").appendChild(opt);
          $("study").value = body.study_uid;
        }
      } else {
        li.className = "refused";
        li.textContent = file.name + ": refused: " + (body.error || ("HTTP " + r.status));
      }
    } catch (e) {
      li.className = "refused";
      li.textContent = file.name + ": refused: " + e;
    }
  }

  function add(files) {
    for (const f of files) queue = queue.then(() => send(f));  // one at a time, in order
  }

  $("find-patient").addEventListener("click", findPatient);
  $("patient-id").addEventListener("change", findPatient);
  $("study").addEventListener("change", () => { $("description-label").hidden = !!$("study").value; });
  $("file-input").addEventListener("change", (e) => { add(e.target.files); e.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files) add(e.dataTransfer.files);
  });
})();
