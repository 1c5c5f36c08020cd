//! `mesh-sim run FILE [--json OUT] [--seeds 1,2,3] [--no-memory] [--unsealed]`: runs a scenario
//! and prints its figures. Nodes seal their datagrams with a gossip keyring, as production nodes
//! do, unless `--unsealed` is given.
//!
//! Exit codes: 0 all invariants held; 1 an invariant was violated (the seed and step are
//! printed for a replay); 2 bad usage or scenario file.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: mesh-sim run SCENARIO.toml [--json OUT.jsonl|-] [--seeds 1,2,3] [--no-memory] [--unsealed]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("run"), Some(file)) = (args.first().map(String::as_str), args.get(1)) else {
        return usage();
    };
    let mut json = None;
    let mut seeds = None;
    let mut memory = true;
    let mut sealed = true;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        if flag == "--no-memory" {
            memory = false;
            continue;
        }
        if flag == "--unsealed" {
            sealed = false;
            continue;
        }
        match (flag.as_str(), rest.next()) {
            ("--json", Some(out)) => json = Some(out.clone()),
            ("--seeds", Some(list)) => {
                match list
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<u64>, _>>()
                {
                    Ok(s) => seeds = Some(s),
                    Err(e) => {
                        eprintln!("error: --seeds: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => return usage(),
        }
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut scenario: mesh_simulations::Scenario = match toml::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(s) = seeds {
        scenario.seeds = s;
    }
    let started = std::time::Instant::now();
    let reports: Result<Vec<_>, String> = scenario
        .seeds
        .iter()
        .map(|&seed| {
            mesh_simulations::Sim::new(&scenario, seed)
                .map(|s| s.sealed(sealed).run_measured(memory))
        })
        .collect();
    let reports = match reports {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", mesh_simulations::table(&reports));
    eprintln!("({} seed(s) in {:.1?})", reports.len(), started.elapsed());
    if let Some(out) = json {
        let lines: String = reports
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default() + "\n")
            .collect();
        let written = if out == "-" {
            print!("{lines}");
            Ok(())
        } else {
            std::fs::write(&out, lines)
        };
        if let Err(e) = written {
            eprintln!("error: {out}: {e}");
            return ExitCode::from(2);
        }
    }
    if reports.iter().any(|r| !r.violations.is_empty()) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
