//! Aligned text tables, as hubble and kubectl print them: Go's
//! `text/tabwriter` (through the `tabwriter` crate) with minimum width 2
//! and padding 3. Every cell but the last of a line is padded to its
//! column's width; the last is written as it is.

use std::io::Write as _;

/// `rows` as an aligned table, one line each.
#[must_use]
pub fn render(rows: &[Vec<String>]) -> String {
    let mut tw = tabwriter::TabWriter::new(Vec::new()).minwidth(2).padding(3);
    for row in rows {
        // Writing to memory cannot fail.
        let _ = writeln!(tw, "{}", row.join("\t"));
    }
    tw.into_inner().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn columns_are_padded_to_their_widest_cell_and_the_last_is_left_alone() {
        let rows = vec![row(&["NAME", "STATUS", "AGE"]), row(&["node-1", "Connected", "10s"]), row(&["a-longer-name", "x", "5m and more"])];
        assert_eq!(
            render(&rows),
            "NAME            STATUS      AGE\nnode-1          Connected   10s\na-longer-name   x           5m and more\n"
        );
        assert_eq!(render(&[]), "");
        // Multi-byte characters count as one.
        assert_eq!(render(&[row(&["→", "b"]), row(&["ab", "c"])]), "→    b\nab   c\n");
    }
}
