// Files: the `_storage` table live through `_system/platform:files`, newest first, with size, type, a preview of
// images and a link; upload (a one-time URL from `_system/platform:generateUploadUrl`) and delete.
import { bytes, confirmButton, describe, h, when } from "./_platform.js";

const PAGE = 24;

export function mount(root, ctx) {
  const report = h("p", { class: "error", role: "alert", testid: "files-error" });
  const status = h("p", { class: "muted", role: "status", testid: "files-status" });
  const grid = h("ul", { class: "file-grid", testid: "files", "aria-label": "Stored files, newest first" });
  const older = h("button", { type: "button", class: "secondary", testid: "files-older" }, "Older");
  const newest = h("button", { type: "button", class: "secondary", testid: "files-newest" }, "Newest");
  const picker = h("input", { id: "file-upload", testid: "file-upload", type: "file" });
  let cursors = [null];
  let next = null;
  let unsubscribe = null;

  function card(doc) {
    const type = doc.contentType || "no type given";
    const image = (doc.contentType || "").startsWith("image/") && doc.url;
    return h(
      "li",
      { class: "file-card", testid: `file-${doc._id}` },
      image
        ? h("img", {
            src: doc.url,
            alt: `Preview of file ${doc._id} (${type})`,
            loading: "lazy",
            testid: `file-preview-${doc._id}`,
          })
        : h("div", { class: "file-icon", "aria-hidden": "true" }, type.split("/")[0]),
      h(
        "dl",
        {},
        h("dt", {}, "Id"),
        h("dd", { class: "mono" }, doc._id),
        h("dt", {}, "Type"),
        h("dd", { testid: `file-type-${doc._id}` }, type),
        h("dt", {}, "Size"),
        h("dd", { testid: `file-size-${doc._id}` }, bytes(doc.size)),
        h("dt", {}, "Created"),
        h("dd", {}, when(doc._creationTime)),
      ),
      h(
        "div",
        { class: "actions" },
        doc.url
          ? h("a", { href: doc.url, target: "_blank", rel: "noopener", testid: `file-link-${doc._id}` }, "Open file")
          : null,
        confirmButton(
          "Delete",
          "Confirm delete",
          () => ctx.client.mutation("_system/platform:deleteFile", { storageId: doc._id }),
          report,
          { testid: `delete-${doc._id}`, "aria-label": `Delete file ${doc._id}` },
        ),
      ),
    );
  }

  function subscribe() {
    if (unsubscribe) unsubscribe();
    unsubscribe = ctx.client.onUpdate(
      "_system/platform:files",
      { limit: PAGE, cursor: cursors[cursors.length - 1] },
      (result) => {
        grid.replaceChildren(
          ...(result.page.length ? result.page.map(card) : [h("li", { class: "muted" }, "No files stored.")]),
        );
        next = result.isDone ? null : result.continueCursor;
        older.disabled = next === null;
        newest.disabled = cursors.length === 1;
      },
      (error) => {
        report.textContent = describe(error);
      },
    );
  }
  older.addEventListener("click", () => {
    if (next === null) return;
    cursors.push(next);
    subscribe();
  });
  newest.addEventListener("click", () => {
    cursors = [null];
    subscribe();
  });
  picker.addEventListener("change", async () => {
    const file = picker.files[0];
    if (!file) return;
    report.textContent = "";
    status.textContent = `Uploading ${file.name}…`;
    try {
      const url = await ctx.client.mutation("_system/platform:generateUploadUrl", {});
      const response = await fetch(url, {
        method: "POST",
        headers: file.type ? { "Content-Type": file.type } : {},
        body: file,
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.message || `The upload was refused (${response.status}).`);
      status.textContent = `Uploaded ${file.name} as ${body.storageId}.`;
      picker.value = "";
    } catch (error) {
      status.textContent = "";
      report.textContent = describe(error);
    }
  });

  root.append(
    h("h2", {}, "Files"),
    h(
      "div",
      { class: "filters" },
      h("div", { class: "field" }, h("label", { for: "file-upload" }, "Upload a file"), picker),
      h("div", { class: "actions" }, newest, older),
    ),
    status,
    report,
    grid,
  );
  subscribe();
  return () => {
    if (unsubscribe) unsubscribe();
  };
}
