package report

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
)

// Plot geometry, in SVG user units.
const (
	svgW, svgH                       = 720, 420
	padL, padR, padT, padB           = 70, 170, 40, 50
	plotW, plotH                     = svgW - padL - padR, svgH - padT - padB
	svgTicks                         = 5
	svgFont                          = "font-family=\"sans-serif\" font-size=\"12\""
	svgTitleFont                     = "font-family=\"sans-serif\" font-size=\"14\" font-weight=\"bold\""
	svgLegendLine, svgLegendRowSpace = 24, 18
)

var svgColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"}

// SVG draws the series as one line plot with linear axes from 0, a marker
// on every point and a legend; title and labels come from the first
// series.
func SVG(series []Series) []byte {
	var b bytes.Buffer
	title, xl, yl := "", "", ""
	if len(series) > 0 {
		title, xl, yl = series[0].Title, series[0].XLabel, series[0].YLabel
	}
	xmax, ymax := 0.0, 0.0
	for _, s := range series {
		for _, p := range s.Points {
			xmax, ymax = math.Max(xmax, p[0]), math.Max(ymax, p[1])
		}
	}
	xmax, ymax = niceCeil(xmax), niceCeil(ymax)
	x := func(v float64) float64 { return padL + v/xmax*plotW }
	y := func(v float64) float64 { return padT + plotH - v/ymax*plotH }

	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(&b, `<text x="%d" y="22" %s>%s</text>`+"\n", padL, svgTitleFont, esc(title))
	// Grid and ticks.
	for i := 0; i <= svgTicks; i++ {
		fx, fy := xmax*float64(i)/svgTicks, ymax*float64(i)/svgTicks
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e0e0e0"/>`+"\n", x(fx), padT, x(fx), padT+plotH)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e0e0e0"/>`+"\n", padL, y(fy), padL+plotW, y(fy))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" %s>%s</text>`+"\n", x(fx), padT+plotH+16, svgFont, esc(num(fx)))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" %s>%s</text>`+"\n", padL-6, y(fy)+4, svgFont, esc(num(fy)))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", padL, padT, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" %s>%s</text>`+"\n", padL+plotW/2, svgH-12, svgFont, esc(xl))
	fmt.Fprintf(&b, `<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)" %s>%s</text>`+"\n", padT+plotH/2, padT+plotH/2, svgFont, esc(yl))
	// Lines, markers and legend.
	for i, s := range series {
		c := svgColors[i%len(svgColors)]
		if len(s.Points) > 1 {
			b.WriteString(`<polyline fill="none" stroke-width="2" stroke="` + c + `" points="`)
			for j, p := range s.Points {
				if j > 0 {
					b.WriteByte(' ')
				}
				fmt.Fprintf(&b, "%.1f,%.1f", x(p[0]), y(p[1]))
			}
			b.WriteString("\"/>\n")
		}
		for _, p := range s.Points {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %s, %s</title></circle>`+"\n", x(p[0]), y(p[1]), c, esc(s.Name), esc(num(p[0])), esc(num(p[1])))
		}
		ly := padT + 10 + i*svgLegendRowSpace
		lx := padL + plotW + 12
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke-width="2" stroke="%s"/>`+"\n", lx, ly, lx+svgLegendLine, ly, c)
		fmt.Fprintf(&b, `<text x="%d" y="%d" %s>%s</text>`+"\n", lx+svgLegendLine+6, ly+4, svgFont, esc(s.Name))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (1 for v ≤ 0),
// so that the axis ticks are round numbers.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p*(1+1e-9) {
			return m * p
		}
	}
	return 10 * p
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
