/* Findings: every ranking table sorts (click a column), filters (trained / untrained / all) and exports
 * its visible rows as CSV, or as JSON (the rows of /api/findings behind them). */
"use strict";
(() => {
  const F = CS.boot.findings;
  CS.$$("table.sortable").forEach((table) => {
    CS.sortableTable(table);
    const sel = CS.$(`[data-filter-for="${table.id}"]`);
    const rows = F[table.dataset.key] || [];
    const apply = () => {
      Array.from(table.tBodies[0].rows).forEach((r) => {
        r.hidden = (sel.value === "trained" && r.dataset.untrained === "1") || (sel.value === "untrained" && r.dataset.untrained !== "1");
      });
    };
    if (sel) { sel.onchange = apply; apply(); }
    CS.$$(`[data-table="${table.id}"]`).forEach((b) => {
      b.onclick = () => {
        const name = `findings_${table.dataset.key}`;
        if (b.dataset.tableExport === "csv") CS.downloadText(CS.csv(CS.tableRows(table)), name + ".csv", "text/csv");
        else {
          const keep = rows.filter((r) => !sel || sel.value === "" || (sel.value === "trained") === !r.untrained);
          CS.downloadText(JSON.stringify({ thresholds: F.thresholds, rows: keep }, null, 1), name + ".json", "application/json");
        }
      };
    });
  });
  document.body.dataset.ready = "1";
})();
