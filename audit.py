"""Which captions are wrong: score every pair of a run's training set with the run's own division, most suspect
first (pair_audit/cli.py has the options and what is written where).

    python audit.py --run RUN_DIR                        # RUN_DIR/audit/pairs.csv and summary.txt
    python audit.py --run RUN_DIR --mllm Qwen2-VL-7B-Instruct --top 100     # + the MLLM's second opinion
    python audit.py --run RUN_DIR --write_clean cleaned.json                # + the annotation file without them
"""
from pair_audit.cli import main

if __name__ == "__main__":
    main()
