//! Output for people (aligned tables, key/value blocks) and for scripts (`--json`): the only
//! place the CLI writes results to standard output.

use std::fmt::Display;

use serde::Serialize;

/// A table with a header row; columns are left-aligned and separated by two spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|header| (*header).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut rendered = String::new();
            for (index, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if index > 0 {
                    rendered.push_str("  ");
                }
                rendered.push_str(cell);
                let pad = width - cell.chars().count();
                rendered.extend(std::iter::repeat_n(' ', pad));
            }
            text.push_str(rendered.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| {
            let label = format!("{key}:");
            format!("{label:<width$}  {value}\n", width = width + 1)
        })
        .collect()
}

/// The value, or `-` when there is none.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// `yes` / `no`.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Writes text to standard output as is.
#[allow(clippy::print_stdout)]
pub fn print(text: &str) {
    print!("{text}");
}

/// Prints a listing: `value` as JSON with `--json`, else the table `render` makes of it. The one
/// shape of every list command (`nodes`, `sessions`, `captures`, `workers`).
pub fn listing<T: Serialize>(
    json: bool,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<std::process::ExitCode> {
    if json {
        print_json(value)?;
    } else {
        print(&render(value));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Writes `value` as pretty JSON and a newline to standard output.
#[allow(clippy::print_stdout)]
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_and_trims_line_ends() {
        let mut table = Table::new(&["ID", "VENUE", "IDLE"]);
        table.row(vec!["body-1".into(), "rupelmonde".into(), "yes".into()]);
        table.row(vec!["b2".into(), "cloud-seven".into()]);
        table.row(vec![
            "bödy-3".into(),
            "-".into(),
            "no".into(),
            "extra".into(),
        ]);
        expect_test::expect![[r#"
            ID      VENUE        IDLE
            body-1  rupelmonde   yes
            b2      cloud-seven
            bödy-3  -            no
        "#]]
        .assert_eq(&table.render());
    }

    #[test]
    fn key_values_align_values() {
        let text = key_values(&[("id", "body-1".into()), ("district", "bxl1".into())]);
        expect_test::expect![[r#"
            id:        body-1
            district:  bxl1
        "#]]
        .assert_eq(&text);
    }
}
